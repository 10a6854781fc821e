"""An Ollama Modelfile for an exported GGUF: the chat template translated to Go, stop strings and sampling."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuiwiz.post.chat import GenerationSettings

# Stop strings of known chat formats, found by their markers in the template.
CHAT_STOPS = {"<|im_end|>": ("<|im_end|>", "<|im_start|>"), "<|eot_id|>": ("<|eot_id|>", "<|start_header_id|>")}
PROBE = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]


@dataclass(frozen=True)
class OllamaTemplate:
    go: str | None  # the Go template; None when the Jinja one could not be translated
    stops: tuple[str, ...]
    exact: bool  # the Go template renders the probe conversation exactly as the Jinja one does


def ollama_template(tokenizer) -> OllamaTemplate:
    """The tokenizer's Jinja chat template as an Ollama (Go) template.

    The shape of one message is read off the Jinja template by rendering (the text one more user
    turn adds), and so is the generation prompt; the result is checked by rendering a probe
    conversation both ways. ChatML and Llama 3 templates translate exactly.
    """
    template = tokenizer.chat_template
    if not template:
        return OllamaTemplate(None, (), False)
    stops = next((stops for marker, stops in CHAT_STOPS.items() if marker in template), ())
    bos = tokenizer.bos_token or ""
    try:
        full = tokenizer.apply_chat_template(PROBE, tokenize=False).removeprefix(bos)
        head = tokenizer.apply_chat_template(PROBE[:3], tokenize=False).removeprefix(bos)
        prompt = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True).removeprefix(bos)
    except Exception:  # a template that rejects the probe (roles, alternation) is not translated
        return OllamaTemplate(None, stops, False)
    marginal = full[len(head):]
    if not full.startswith(head) or marginal.count("U2") != 1 or marginal.count("user") != 1:
        return OllamaTemplate(None, stops, False)
    message = marginal.replace("U2", "{{ .Content }}").replace("user", "{{ .Role }}")
    go = "{{- range .Messages }}" + message + "{{ end }}" + prompt[len(full):]
    ours = "".join(message.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in PROBE)
    return OllamaTemplate(go, stops, ours == full)


OLLAMA_MAX_CONTEXT = 8192  # Ollama allocates the KV cache for num_ctx up front: a long context costs memory


def sampling_defaults(folder: Path) -> dict:
    """The model's own sampling settings (generation_config.json), else tuiwiz chat's."""
    chat = GenerationSettings()
    path = folder / "generation_config.json"
    own = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    sampled = own.get("do_sample", True)
    return {"temperature": float(own.get("temperature", chat.temperature)) if sampled else 0.0,
            "top_p": float(own.get("top_p", chat.top_p))}


def modelfile_text(gguf_name: str, template: OllamaTemplate, eos_token: str | None, *, context: int | None = None,
                   temperature: float = 0.7, top_p: float = 0.9) -> tuple[str, list[str]]:
    """The Modelfile, and notes for the user."""
    notes = []
    lines = [f"FROM ./{gguf_name}", ""]
    if template.go is not None:
        lines += [f'TEMPLATE """{template.go}"""', ""]
        if not template.exact:
            notes.append("the chat template was translated for Ollama approximately (it adds text tuiwiz does not "
                         "reproduce, such as a default system message); check the Modelfile's TEMPLATE")
    else:
        notes.append("the chat template could not be translated for Ollama: the Modelfile has no TEMPLATE, so "
                     "Ollama uses the GGUF's own")
    for stop in dict.fromkeys([*template.stops, *([eos_token] if eos_token else [])]):
        lines.append(f'PARAMETER stop "{stop}"')
    lines.append(f"PARAMETER temperature {temperature}")
    lines.append(f"PARAMETER top_p {top_p}")
    if context:  # Ollama's default context is shorter than most models'
        lines.append(f"PARAMETER num_ctx {min(context, OLLAMA_MAX_CONTEXT)}")
    return "\n".join(lines) + "\n", notes
