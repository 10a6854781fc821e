"""The JSON-lines chat server (``tuiwiz chat --jsonl``) the app's Chat screen drives: a ChatEngine on stdin/stdout."""

from __future__ import annotations

import json
import sys
import threading

from .chat import ACTIVE, ChatEngine, GenerationSettings
from .errors import UserError


def _ask(engine: ChatEngine, channel, request: dict) -> None:
    rid = request.get("id")
    adapter = request.get("adapter", "active")
    adapter = None if adapter == "base" else ACTIVE if adapter in (None, "active") else adapter
    try:  # a malformed request is the caller's error; what fails while generating is reported as itself
        settings = GenerationSettings(temperature=float(request.get("temperature", 0.7)),
                                      top_p=float(request.get("top_p", 0.9)),
                                      max_new_tokens=int(request.get("max_new_tokens", 256)))
        messages = list(request["messages"])
    except (KeyError, TypeError, ValueError) as exc:
        channel.emit("error", id=rid, kind="input", message=f"bad request: {exc}", hint=None)
        return
    try:
        for piece in engine.stream(messages, system=request.get("system") or None, settings=settings,
                                   adapter=adapter):
            channel.emit("token", id=rid, text=piece)
        s = engine.last_stats
        channel.emit("done", id=rid, tokens=s.new_tokens, first_token_s=s.first_token_s, seconds=s.seconds,
                     stopped=s.stopped, tokens_per_second=s.tokens_per_second)
    except BaseException as exc:
        channel.error(exc, id=rid)


def _adapters_event(engine: ChatEngine, channel) -> None:
    channel.emit("adapters", adapters=list(engine.adapters), active=engine.active_adapter)


def run_jsonl(ref: str) -> int:
    """Serve one chat over stdin/stdout, a JSON object a line (see docs/post-training.md).

    Requests: ``ask`` (id, messages, system, temperature, top_p, max_new_tokens, adapter: "active",
    "base" or a name), ``stop``, ``add_adapter`` (ref, name), ``set_adapter`` (name), ``quit``.
    Events: ``loading``, ``ready``, ``token``, ``done``, ``adapters``, ``error``. Answers are generated
    in a thread, so a ``stop`` read while one streams ends it at the next token.
    """
    from .jsonl import Channel

    channel = Channel()
    try:
        engine = ChatEngine(ref)
        channel.emit("loading", label=engine.source.label)
        engine.load()
    except BaseException as exc:
        channel.error(exc)
        return exc.exit_code if isinstance(exc, UserError) else 1
    channel.emit("ready", label=engine.source.label, adapters=list(engine.adapters), active=engine.active_adapter,
                 device=str(engine.device), chat_template=bool(engine.tokenizer.chat_template))
    answering: threading.Thread | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            channel.emit("error", kind="input", message=f"not a request: {line.strip()[:200]}",
                         hint='one JSON object a line with an "op"')
            continue
        busy = answering is not None and answering.is_alive()
        if op == "quit":
            break
        if op == "stop":
            engine.stop()
        elif busy:
            channel.emit("error", id=request.get("id"), kind="busy", message="an answer is still streaming",
                         hint="send stop first, or wait for done")
        elif op == "ask":
            answering = threading.Thread(target=_ask, args=(engine, channel, request), name="tuiwiz-ask",
                                         daemon=True)
            answering.start()
        elif op in ("add_adapter", "set_adapter"):
            try:
                if op == "add_adapter":
                    engine.add_adapter(request["ref"], request.get("name"))
                else:
                    engine.set_adapter(request["name"])
                _adapters_event(engine, channel)
            except BaseException as exc:
                channel.error(exc)
        else:
            channel.emit("error", kind="input", message=f"unknown op {op!r}",
                         hint="ops: ask, stop, add_adapter, set_adapter, quit")
    engine.stop()
    if answering is not None:
        answering.join()
    return 0
