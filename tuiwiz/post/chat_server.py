"""The JSON-lines chat server (``tuiwiz chat --jsonl``) the app's Chat screen drives: a ChatEngine on stdin/stdout."""

from __future__ import annotations

import threading

from tuiwiz.errors import UserError
from tuiwiz.post.chat import ACTIVE, ChatEngine, GenerationSettings


class _Answer:
    """The one answer that may stream at a time. Its final event and the end of "busy" happen under one
    lock, so a request sent on seeing ``done`` is never refused as busy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._thread: threading.Thread | None = None

    def start(self, target, *args) -> bool:
        with self._lock:
            if self._busy:
                return False
            self._busy = True
            self._thread = threading.Thread(target=target, args=(*args, self._finish), name="tuiwiz-ask",
                                            daemon=True)
            self._thread.start()
            return True

    def _finish(self, final) -> None:
        with self._lock:
            final()
            self._busy = False

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._busy

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


def _parse_ask(request: dict):
    """The request's settings and messages; ValueError names what is wrong."""
    try:
        settings = GenerationSettings(temperature=float(request.get("temperature", 0.7)),
                                      top_p=float(request.get("top_p", 0.9)),
                                      max_new_tokens=int(request.get("max_new_tokens", 256)))
        messages = list(request["messages"])
    except KeyError as exc:
        raise ValueError(f"missing {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    adapter = request.get("adapter", "active")
    adapter = None if adapter == "base" else ACTIVE if adapter in (None, "active") else adapter
    return settings, messages, adapter


def _answer(engine: ChatEngine, channel, request: dict, parsed, finish) -> None:
    rid = request.get("id")
    settings, messages, adapter = parsed
    try:
        for piece in engine.stream(messages, system=request.get("system") or None, settings=settings,
                                   adapter=adapter):
            channel.emit("token", id=rid, text=piece)
        s = engine.last_stats
        finish(lambda: channel.emit("done", id=rid, tokens=s.new_tokens, first_token_s=s.first_token_s,
                                    seconds=s.seconds, stopped=s.stopped, tokens_per_second=s.tokens_per_second))
    except BaseException as exc:  # what fails while generating is reported as itself
        failure = exc
        finish(lambda: channel.error(failure, id=rid))


def _refuse_busy(channel, request: dict) -> None:
    channel.emit("error", id=request.get("id"), kind="busy", message="an answer is still streaming",
                 hint="send stop first, or wait for done")


def _adapters_event(engine: ChatEngine, channel) -> None:
    channel.emit("adapters", adapters=list(engine.adapters), active=engine.active_adapter)


def run_jsonl(ref: str) -> int:
    """Serve one chat over stdin/stdout, a JSON object a line (see docs/post-training.md).

    Requests: ``ask`` (id, messages, system, temperature, top_p, max_new_tokens, adapter: "active",
    "base" or a name), ``stop``, ``add_adapter`` (ref, name), ``set_adapter`` (name), ``quit``.
    Events: ``loading``, ``ready``, ``token``, ``done``, ``adapters``, ``error``. Answers are generated
    in a thread, so a ``stop`` read while one streams ends it at the next token.
    """
    from tuiwiz.post.jsonl import Channel, read_requests

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
    answer = _Answer()
    for request in read_requests(channel, ("ask", "stop", "add_adapter", "set_adapter")):
        op = request["op"]
        if op == "stop":
            engine.stop()
        elif op == "ask":
            try:  # a malformed request is the caller's error, answered before anything starts
                parsed = _parse_ask(request)
            except ValueError as exc:
                channel.emit("error", id=request.get("id"), kind="input", message=f"bad request: {exc}", hint=None)
                continue
            if not answer.start(_answer, engine, channel, request, parsed):
                _refuse_busy(channel, request)
        elif op in ("add_adapter", "set_adapter") and answer.busy:  # not while the model is generating
            _refuse_busy(channel, request)
        else:
            try:
                if op == "add_adapter":
                    engine.add_adapter(request["ref"], request.get("name"))
                else:
                    engine.set_adapter(request["name"])
                _adapters_event(engine, channel)
            except BaseException as exc:
                channel.error(exc)
    engine.stop()
    answer.join()
    return 0
