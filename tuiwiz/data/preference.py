"""Records of the tasks past SFT, normalised: preference pairs, unpaired (KTO) completions, prompts
(GRPO) and text-to-text (seq2seq). tuiwiz.data.datasets sniffs the format and calls these.

- preference: ``{"prompt": str | messages, "chosen": str, "rejected": str}``. The data may give
  prompt/chosen/rejected as text, chosen/rejected as whole conversations (UltraFeedback: the shared
  turns become the prompt), or HH-RLHF's ``\\n\\nHuman: ... \\n\\nAssistant: ...`` strings.
- unpaired: ``{"prompt": str | messages, "completion": str, "label": bool}``
- prompt: ``{"prompt": str | messages, "answer": str | None, "columns": {the record's other columns}}``
- seq2seq: ``{"input": str, "target": str}``

A prompt given as messages ends with a user turn; chosen, rejected and completion are the
assistant's reply to it. Bad records raise ``UserError`` naming the file, line and field.
"""

from __future__ import annotations

import re
from pathlib import Path

from tuiwiz.data.files import data_error

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_messages(text: str) -> list[dict] | None:
    """HH-RLHF's ``\\n\\nHuman: ...\\n\\nAssistant: ...`` as chat messages; None when it is not so written."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if len(parts) < 5 or parts[0].strip():  # leading text, then (role, content) pairs: two turns at least
        return None
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def _conversation(value, field: str, path: Path, line: int, text, messages) -> list[dict] | str:
    """A prompt or a whole conversation: text, chat messages, or HH-RLHF text (as messages)."""
    if isinstance(value, list):
        return messages(value, path, line, field, need_assistant=False)
    parsed = _hh_messages(value) if isinstance(value, str) else None
    return parsed if parsed is not None else text(value, path, line, field)


def _reply(value, field: str, path: Path, line: int, text, messages) -> list[dict] | str:
    """A reply: text, or messages (a whole conversation, or the assistant's turn alone)."""
    if isinstance(value, list):
        return messages(value, path, line, field, need_assistant=True)
    parsed = _hh_messages(value) if isinstance(value, str) else None
    return parsed if parsed is not None else text(value, path, line, field)


def _split_last_reply(conversation: list[dict], field: str, path: Path, line: int) -> tuple[list[dict], str]:
    if conversation[-1]["role"] != "assistant":
        raise data_error(f"'{field}' should end with the assistant's reply, not a {conversation[-1]['role']} turn",
                         path, line, field)
    return conversation[:-1], conversation[-1]["content"]


def _check_prompt(prompt, field: str, path: Path, line: int) -> None:
    if isinstance(prompt, list) and prompt and prompt[-1]["role"] != "user":
        raise data_error(f"the prompt should end with a user turn, not a {prompt[-1]['role']} turn", path, line,
                         field, hint="the model replies to the prompt's last user message")


def preference_record(item: dict, col: dict, path: Path, line: int, text, messages) -> dict:
    """One preference pair. ``col`` maps roles to the record's columns; ``text``/``messages`` are
    datasets.py's checkers for one text field and one list of messages."""
    chosen = _reply(item[col["chosen"]], col["chosen"], path, line, text, messages)
    rejected = _reply(item[col["rejected"]], col["rejected"], path, line, text, messages)
    prompt = None
    if col["prompt"] is not None and item.get(col["prompt"]) not in (None, ""):
        prompt = _conversation(item[col["prompt"]], col["prompt"], path, line, text, messages)
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise data_error(f"'{col['chosen']}' and '{col['rejected']}' should both be text or both be messages", path,
                         line, col["rejected"])
    if isinstance(chosen, list):
        chosen_turns, chosen = _split_last_reply(chosen, col["chosen"], path, line)
        rejected_turns, rejected = _split_last_reply(rejected, col["rejected"], path, line)
        if chosen_turns != rejected_turns:
            raise data_error(
                f"'{col['chosen']}' and '{col['rejected']}' differ before their last assistant reply", path, line,
                col["rejected"], hint="a pair shares its conversation and differs only in the final reply")
        if chosen_turns:  # whole conversations: the shared turns are the prompt (UltraFeedback's prompt
            prompt = chosen_turns  # column repeats the first of them as text)
    if prompt is None:
        raise data_error(
            f"this preference pair has no prompt: no '{col['prompt'] or 'prompt'}' column, and "
            f"'{col['chosen']}'/'{col['rejected']}' are not conversations that hold it", path, line,
            col["prompt"] or "prompt",
            hint="add a prompt column (map it with data.columns.prompt), or give chosen/rejected as chat messages")
    if chosen.strip() == rejected.strip():
        raise data_error(f"'{col['chosen']}' and '{col['rejected']}' are the same text: the pair teaches nothing",
                         path, line, col["rejected"], hint="remove the row, or fix the rejected reply")
    _check_prompt(prompt, col["prompt"] or col["chosen"], path, line)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


_TRUE, _FALSE = ("true", "yes", "desirable"), ("false", "no", "undesirable")


def _label(value, field: str, path: Path, line: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:  # CSV has no booleans
        return value.strip().lower() in _TRUE
    raise data_error(f"'{field}' should be true or false (is the completion desirable?), not {value!r}", path,
                     line, field, hint="write true or false; KTO learns from desirable and undesirable completions")


def unpaired_record(item: dict, col: dict, path: Path, line: int, text, messages) -> dict:
    """One KTO example: a prompt, a completion and whether it is desirable."""
    prompt = _conversation(item[col["prompt"]], col["prompt"], path, line, text, messages)
    completion = _reply(item[col["completion"]], col["completion"], path, line, text, messages)
    if isinstance(completion, list):
        turns, completion = _split_last_reply(completion, col["completion"], path, line)
        if turns:
            raise data_error(f"'{col['completion']}' should hold the reply alone; the conversation goes in "
                             f"'{col['prompt']}'", path, line, col["completion"])
    _check_prompt(prompt, col["prompt"], path, line)
    return {"prompt": prompt, "completion": completion, "label": _label(item[col["label"]], col["label"], path, line)}


def prompt_record(item: dict, col: dict, path: Path, line: int, text, messages) -> dict:
    """One GRPO prompt, with the reference answer when the data has one."""
    prompt = _conversation(item[col["prompt"]], col["prompt"], path, line, text, messages)
    _check_prompt(prompt, col["prompt"], path, line)
    answer = None
    if col["answer"] is not None and item.get(col["answer"]) is not None:
        value = item[col["answer"]]
        answer = text(str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value,
                      path, line, col["answer"])
    used = {col["prompt"], col["answer"]}
    return {"prompt": prompt, "answer": answer,
            "columns": {k: v for k, v in item.items() if k not in used and k not in ("prompt", "answer")}}


def seq2seq_record(item: dict, col: dict, path: Path, line: int, text, messages) -> dict:
    return {"input": text(item[col["source"]], path, line, col["source"]),
            "target": text(item[col["target"]], path, line, col["target"])}


NORMALISERS = {
    "preference": preference_record,
    "unpaired": unpaired_record,
    "prompt": prompt_record,
    "seq2seq": seq2seq_record,
}


def prompt_text(prompt) -> str:
    """A prompt as one line of plain text (for tables and messages)."""
    if isinstance(prompt, str):
        return prompt
    return " / ".join(f"{m['role']}: {m['content']}" for m in prompt)
