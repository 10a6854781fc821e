"""A reward model's input and its scores: what task ``reward`` trains on, what GRPO's ``reward_model``
reward and ``tuiwiz score`` feed it.

One rendering serves all three, so a reward model scores prompt + completion exactly as it saw them in
training: through the tokenizer's chat template (a text prompt becomes the user's turn, the completion
the assistant's reply), or, without a template, as prompt + completion + the end-of-sequence token.
Light at import: the training stack is imported inside the functions that load and run the model.
"""

from __future__ import annotations

from tuiwiz.errors import UserError
from tuiwiz.run.outputs import RunOutput


def as_messages(prompt) -> list[dict]:
    """A prompt as chat messages: text becomes the user's turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def completion_text(completion) -> str:
    """A completion's text: TRL hands conversational completions over as ``[{"role": "assistant", ...}]``."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


def reward_text(tokenizer, prompt, completion) -> str:
    """Prompt and completion as one text, the way a reward model trains on and scores them."""
    if tokenizer.chat_template:
        messages = as_messages(prompt) + [{"role": "assistant", "content": completion_text(completion)}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    if not isinstance(prompt, str):
        raise UserError(
            "the prompts are chat messages, but the reward model's tokenizer has no chat template",
            hint="use a chat (instruct) model for the reward model, or give the prompts as text", kind="data")
    return prompt + completion_text(completion) + (tokenizer.eos_token or "")


def reward_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered text; a chat template writes its own special tokens, plain text gets the model's."""
    return tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"]


def load_reward_model(output: RunOutput, device: str = "cpu"):
    """(model, tokenizer) of a completed reward run, in eval mode: its adapter merged into its base, or its
    whole model."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # the base's head is replaced by the adapter's saved one
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    loader = transformers.AutoModelForSequenceClassification
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(output.path))
    if output.kind == "full":
        model = loader.from_pretrained(str(output.path), num_labels=1, dtype=dtype)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(loader.from_pretrained(str(output.base_model), num_labels=1, dtype=dtype),
                                          str(output.path))
        if output.kind == "adapter":  # virtual tokens cannot be merged: they stay a PeftModel
            model = model.merge_and_unload()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last token that is not padding
    return model.to(device).eval(), tokenizer


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 16) -> list[float]:
    """The reward model's score of each rendered text."""
    import torch

    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        ids = [reward_ids(tokenizer, text) for text in texts[start:start + batch_size]]
        batch = tokenizer.pad({"input_ids": ids}, padding=True, padding_side="right", return_tensors="pt")
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
        scores.extend(float(value) for value in logits[:, 0].float())
    return scores
