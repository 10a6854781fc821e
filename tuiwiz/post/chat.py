"""Chat with a run's model: an engine a Textual worker thread can drive, and a plain terminal REPL.

One model is loaded: the base with the run's adapter (more adapters can be added and switched),
or a whole model (a full fine-tune's output, or a merged or exported folder). ``stream`` yields
text as it is generated (transformers' TextIteratorStreamer, generation in its own thread);
``stop`` ends a generation at the next token. Answering with the adapter disabled gives the base
model's answer from the same loaded weights, for side-by-side comparison. The JSON-lines
server the app drives is in chat_server.py.

An encoder-decoder run (task seq2seq: T5, mT5, mT0) is text to text: the last message is the input as
it is, with no chat template and no earlier turns, and the answer is what the decoder generates.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.errors import UserError
from tuiwiz.post.merge_plan import available_ram_bytes
from tuiwiz.run.outputs import RunOutput, run_output
from tuiwiz.tasks import TASKS


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.9
    max_new_tokens: int = 256


@dataclass(frozen=True)
class StreamStats:
    """How the last ``stream`` went."""

    new_tokens: int
    first_token_s: float | None  # from the call to the first generated token
    seconds: float
    stopped: bool  # ended by ``stop()``

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ChatSource:
    """What a chat loads: weights, adapters on them, the tokenizer (with the chat template)."""

    weights: Path
    adapters: tuple[tuple[str, Path], ...]
    tokenizer: Path
    task: str
    label: str

    @property
    def text_to_text(self) -> bool:
        """An encoder-decoder: the input goes in as it is and the decoder writes the answer."""
        task = TASKS.get(self.task)
        return task is not None and task.model == "seq2seq"


_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Model output made safe for a terminal: control characters (an escape sequence could move the
    cursor, retitle the window or worse) become U+FFFD; newlines and tabs stay."""
    return _CONTROLS.sub("\ufffd", text)


class _Active:
    def __repr__(self) -> str:
        return "ACTIVE"


ACTIVE = _Active()  # ``stream(adapter=ACTIVE)``: whichever adapter is active now


def chat_source(ref: str | Path | RunOutput) -> ChatSource:
    """A run (id or folder) or a model folder (merged, exported, any transformers folder)."""
    if not isinstance(ref, RunOutput):
        folder = Path(ref).expanduser()
        if (folder / "config.json").exists() and not (folder / "state.json").exists():
            return ChatSource(folder.resolve(), (), folder.resolve(), _folder_task(folder, folder), folder.name)
        if (folder / "adapter_config.json").exists() and not (folder / "state.json").exists():
            base = Path(json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"])
            return ChatSource(base, ((folder.name, folder.resolve()),), folder.resolve(), _folder_task(folder, base),
                              folder.name)
        ref = run_output(str(ref))
    source = ref
    if source.is_classifier:
        raise UserError(f"run {source.run.run_id} trained a classifier; there is nothing to chat with",
                        hint="chat works with sft and pretraining runs", kind="run")
    if source.kind == "full":
        return ChatSource(source.path, (), source.path, source.task, source.run.run_id)
    return ChatSource(source.base_model, ((source.run.run_id, source.path),), source.path, source.task,
                      source.run.run_id)


def _folder_task(folder: Path, weights: Path) -> str:
    """The task of a model folder: its tuiwiz.json's (a merge or export of a run), else seq2seq for an
    encoder-decoder's config and sft for any other."""
    meta = folder / "tuiwiz.json"
    if meta.exists():
        return json.loads(meta.read_text(encoding="utf-8")).get("task", "sft")
    try:
        config = json.loads((weights / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "sft"
    return "seq2seq" if config.get("is_encoder_decoder") else "sft"


def model_bytes(folder: Path) -> int:
    """The size of a model's weights on disk (safetensors, else PyTorch .bin)."""
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    return sum(f.stat().st_size for f in files if f.name != "training_args.bin")


def check_fits(source: ChatSource, *, device: str | None, memory_budget_mb: float | None = None) -> int:
    """The bytes the model needs; a UserError when free VRAM (or RAM on CPU) is less.

    A budget (the argument or ``TUIWIZ_MEMORY_BUDGET_MB``) replaces the measurement, whatever the device.
    """
    import os

    need = model_bytes(source.weights) + sum(model_bytes(path) for _, path in source.adapters)
    need = int(need * 1.1) + 64 * 2**20  # activations, the KV cache, the libraries' buffers
    budget = memory_budget_mb is not None or bool(os.environ.get("TUIWIZ_MEMORY_BUDGET_MB"))
    if budget or device == "cpu":
        free, where = available_ram_bytes(memory_budget_mb), "memory" if budget else "RAM"
    else:
        import torch

        free, where = torch.cuda.mem_get_info()[0], "GPU memory"
    if free < need:
        raise UserError(
            f"the model needs about {need / 2**20:.0f} MiB and {free / 2**20:.0f} MiB of {where} are free",
            hint="close what else holds memory (another chat, a training run), or chat with a smaller model",
            kind="resources",
        )
    return need


@functools.cache
def _streaming_classes():
    """(StopOnEvent, CountingStreamer), defined once torch and transformers are wanted."""
    import torch
    from transformers import StoppingCriteria, TextIteratorStreamer

    class StopOnEvent(StoppingCriteria):
        """Ends generation at the next token once the event is set."""

        def __init__(self, event: threading.Event) -> None:
            self.event = event

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)

        def __deepcopy__(self, memo):  # peft deep-copies generate's arguments (prompt tuning on T5): stay one
            return self

    class CountingStreamer(TextIteratorStreamer):
        """Counts generated tokens and notes when the first one came."""

        tokens = 0
        first: float | None = None

        def put(self, value):
            if not self.next_tokens_are_prompt:
                self.first = self.first or time.perf_counter()
                self.tokens += value.numel()
            return super().put(value)

        def __deepcopy__(self, memo):  # as StopOnEvent: the reader waits on this one
            return self

    return StopOnEvent, CountingStreamer


class ChatEngine:
    """Load once (``load``, in a worker), then ``stream`` answers; thread-safe: one generation at a time."""

    def __init__(self, ref: str | Path | RunOutput | ChatSource, *, device: str | None = None,
                 memory_budget_mb: float | None = None) -> None:
        self.source = ref if isinstance(ref, ChatSource) else chat_source(ref)
        self.device = device
        self.memory_budget_mb = memory_budget_mb
        self.model = None
        self.tokenizer = None
        self.last_stats: StreamStats | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- loading ------------------------------------------------------------------
    def load(self) -> ChatEngine:
        import os

        budget = self.memory_budget_mb is not None or bool(os.environ.get("TUIWIZ_MEMORY_BUDGET_MB"))
        if budget:  # checked before torch is imported: a refusal comes at once
            check_fits(self.source, device=self.device, memory_budget_mb=self.memory_budget_mb)
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if not budget:
            check_fits(self.source, device=self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.source.tokenizer)
        kwargs = {"dtype": "auto"}
        if self.device != "cpu":
            kwargs["device_map"] = {"": self.device}
        model_class = AutoModelForSeq2SeqLM if self.source.text_to_text else AutoModelForCausalLM
        model = model_class.from_pretrained(self.source.weights, **kwargs)
        if self.source.adapters:
            from peft import PeftModel

            (name, path), *more = self.source.adapters
            model = PeftModel.from_pretrained(model, path, adapter_name=name)
            for other, other_path in more:
                model.load_adapter(other_path, adapter_name=other)
        self.model = model.eval()
        return self

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(getattr(self.model, "peft_config", {}) or ())

    @property
    def active_adapter(self) -> str | None:
        return getattr(self.model, "active_adapter", None) if self.adapters else None

    def add_adapter(self, ref: str | Path, name: str | None = None) -> str:
        """Load another run's adapter (trained on the same base) beside the first; returns its name."""
        source = chat_source(ref)
        if not source.adapters:
            raise UserError(f"{source.label} has no adapter to add", kind="run")
        if not self.adapters:
            raise UserError("this model has no adapter: adapters are added to a base loaded with one",
                            hint="chat with an adapter run first", kind="run")
        if source.weights.resolve() != self.source.weights.resolve():
            raise UserError(f"{source.label} was trained on {source.weights.name}, not {self.source.weights.name}",
                            hint="adapters switch only on the base they were trained on", kind="run")
        name = name or source.adapters[0][0]
        if name in self.adapters:
            raise UserError(f"an adapter named {name} is already loaded", field="name", kind="input")
        with self._lock:
            self.model.load_adapter(source.adapters[0][1], adapter_name=name)
        return name

    def set_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise UserError(f"no adapter {name}", hint="loaded: " + (", ".join(self.adapters) or "none"), kind="input")
        with self._lock:
            self.model.set_adapter(name)

    # --- generating ---------------------------------------------------------------
    def prompt_ids(self, messages: list[dict], system: str | None = None) -> dict:
        """The model inputs for a conversation, with the chat template (or the Alpaca layout without one);
        for an encoder-decoder, the last user message as it is (text to text: no template, no history)."""
        tok = self.tokenizer
        if self.source.text_to_text:
            text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            return {k: v.to(self.model.device) for k, v in tok(text, return_tensors="pt").items()}
        if system:
            messages = [{"role": "system", "content": system}, *[m for m in messages if m["role"] != "system"]]
        if tok.chat_template:
            inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)
        else:
            from tuiwiz.data.rendering import ALPACA_PROMPT

            user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            text = ALPACA_PROMPT.format(instruction=user) if self.source.task == "sft" else user
            inputs = tok(text, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    def stop(self) -> None:
        """End the current generation at the next token (safe from any thread)."""
        self._stop.set()

    @property
    def generating(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stream(self, messages: list[dict], *, system: str | None = None, settings: GenerationSettings | None = None,
               temperature: float | None = None, top_p: float | None = None, max_new_tokens: int | None = None,
               adapter=ACTIVE, **generate_kwargs) -> Iterator[str]:
        """Yield the answer's text as it is generated. ``adapter``: ACTIVE, None (the base), or a name."""
        if not self.loaded:
            raise RuntimeError("ChatEngine.load() first")
        s = settings or GenerationSettings()
        temperature = s.temperature if temperature is None else temperature
        top_p = s.top_p if top_p is None else top_p
        max_new_tokens = s.max_new_tokens if max_new_tokens is None else max_new_tokens
        if adapter is not ACTIVE and adapter is not None and adapter not in self.adapters:
            raise UserError(f"no adapter {adapter}", hint="loaded: " + (", ".join(self.adapters) or "none"),
                            kind="input")
        if adapter is None and not self.adapters:
            raise UserError("this model has no adapter to switch off", hint="a merged or full model is all one",
                            kind="input")
        import torch
        from transformers import StoppingCriteriaList

        StopOnEvent, CountingStreamer = _streaming_classes()
        with self._lock:
            self._stop.clear()
            started = time.perf_counter()
            streamer = CountingStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            inputs = self.prompt_ids(messages, system)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 \
                else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            kwargs = dict(**inputs, streamer=streamer, max_new_tokens=max_new_tokens,
                          stopping_criteria=StoppingCriteriaList([StopOnEvent(self._stop)]),
                          pad_token_id=self._pad_token_id(),
                          **sampling, **generate_kwargs)
            failure: list[BaseException] = []
            model = self.model

            def generate() -> None:
                try:
                    with torch.inference_mode():
                        if adapter is None:
                            with model.disable_adapter():
                                model.generate(**kwargs)
                        else:
                            model.generate(**kwargs)
                except BaseException as exc:  # handed to the reading thread
                    failure.append(exc)
                    streamer.end()

            previous = self.active_adapter
            switch = adapter is not ACTIVE and adapter is not None
            if switch:
                model.set_adapter(adapter)
            thread = self._thread = threading.Thread(target=generate, name="tuiwiz-generate", daemon=True)
            finished = False
            try:
                thread.start()
                started_text = False
                for piece in streamer:
                    if not started_text:  # a template whose prompt ends before the newline: drop it
                        piece = piece.lstrip()
                        started_text = bool(piece)
                    if piece:  # the streamer sends "" while a word is incomplete
                        yield piece
                finished = True
            finally:
                if not finished:  # the reader stopped early (or was interrupted): end the generation
                    self._stop.set()
                thread.join()
                if switch and previous:
                    model.set_adapter(previous)
                first = streamer.first - started if streamer.first else None
                self.last_stats = StreamStats(streamer.tokens, first, time.perf_counter() - started,
                                              self._stop.is_set())
            if failure:
                raise failure[0]

    def _pad_token_id(self) -> int | None:
        pad = self.tokenizer.pad_token_id  # T5's is 0: a test for None, not for truth
        return pad if pad is not None else self.tokenizer.eos_token_id

    def answer(self, messages: list[dict], **kwargs) -> str:
        return "".join(self.stream(messages, **kwargs))

    def compare(self, messages: list[dict], **kwargs) -> tuple[str, str]:
        """(base answer, fine-tuned answer) to the same conversation, from the one loaded model."""
        return self.answer(messages, adapter=None, **kwargs), self.answer(messages, **kwargs)


# --- the plain REPL -------------------------------------------------------------------

HELP = "type a message; /clear forgets the conversation, /quit leaves; Ctrl-C stops an answer"


def _print_stream(engine: ChatEngine, label: str, messages: list[dict], **kwargs) -> str:
    print(f"{label}> ", end="", flush=True)
    pieces = []
    stream = engine.stream(messages, **kwargs)
    try:
        for piece in stream:
            pieces.append(piece)
            print(printable(piece), end="", flush=True)
    except KeyboardInterrupt:
        engine.stop()
        for piece in stream:  # the generation ends at its next token
            pieces.append(piece)
        print(" [stopped]", end="")
    print(flush=True)
    return "".join(pieces)


def run_repl(ref: str, *, settings: GenerationSettings | None = None, system: str | None = None,
             base: bool = False, compare: bool = False) -> int:
    engine = ChatEngine(ref)
    if (base or compare) and not engine.source.adapters:
        raise UserError(f"{engine.source.label} has no adapter, so there is no base to answer with",
                        hint="--base and --compare need an adapter run", kind="input")
    print(f"loading {engine.source.label} ...", file=sys.stderr, flush=True)
    engine.load()
    print(HELP, file=sys.stderr, flush=True)
    messages: list[dict] = []
    label = "base" if base else engine.source.label
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/clear":
            messages.clear()
            print("(conversation cleared)", flush=True)
            continue
        messages.append({"role": "user", "content": text})
        kwargs = {"system": system, "settings": settings}
        if compare:
            _print_stream(engine, "base", messages, adapter=None, **kwargs)
        reply = _print_stream(engine, label, messages, adapter=None if base else ACTIVE, **kwargs)
        messages.append({"role": "assistant", "content": reply})
