"""End to end on the demo model: the real CLI, the real detached runner, real transformers/peft/trl.

Each method trains a few dozen steps; the loss must fall and the output must reload and generate.
"""

import json

import pytest

from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import RunDir, read_state

from .support.processes import run_cli
from .support.runs import build_trainer, generate, losses, only_run, write_profile

pytestmark = pytest.mark.slow


def assert_trained(result, run: RunDir, fall: float = 0.7):
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    assert read_state(run).status == "completed"
    curve = losses(run)
    first, last = curve[min(curve)], curve[max(curve)]
    assert last < fall * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    events = read_events(run.events)
    start = next(e for e in events if e["type"] == "run_start")
    assert 0 < start["params_trainable"] <= start["params_total"]
    assert start["world_size"] == 1
    assert any(e["type"] == "run_end" and e["status"] == "completed" for e in events)
    return start


METHOD_PROFILES = [
    "demo-full.yaml", "demo-lora-dora.yaml", "demo-qlora-4bit.yaml", "demo-qlora-8bit.yaml",
    "demo-prompt-tuning.yaml", "demo-prefix-tuning.yaml", "demo-p-tuning.yaml", "demo-ia3.yaml",
    "demo-adalora.yaml", "demo-bitfit.yaml", "demo-chat-lora.yaml", "demo-pretrain-lora.yaml",
]


@pytest.mark.parametrize("base", METHOD_PROFILES)
def test_every_method_trains_and_reloads(tmp_path, base):
    profile = write_profile(tmp_path, base)
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    start = assert_trained(result, run)
    meta = json.loads((run.output / "tuiwiz.json").read_text())
    assert meta["method"] == start["method"]
    generate(run.output)


def test_classification_on_pretrained_minilm(tmp_path):
    profile = write_profile(tmp_path, "minilm-classification.yaml")
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    assert_trained(result, run, fall=0.9)
    evals = [e for e in read_events(run.events) if e["type"] == "eval"]
    assert evals and evals[-1]["eval_accuracy"] > 0.8

    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    labels = json.loads((run.output / "tuiwiz.json").read_text())["labels"]
    assert labels == ["food", "sports", "tech", "weather"]
    # As peft users load a classifier: the label count comes with the call.
    model = AutoPeftModelForSequenceClassification.from_pretrained(run.output, num_labels=len(labels)).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.output)
    with torch.no_grad():
        logits = model(**tokenizer(["Heavy snow fell in the mountains overnight."], return_tensors="pt")).logits
    assert logits.shape[-1] == len(labels)
    assert labels[int(logits.argmax())] == "weather"


def chatml(messages: list[dict]) -> str:
    """The demo tokenizer's chat template, written out by hand."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def first_batch(trainer, tokenizer) -> list[tuple[str, list[str]]]:
    """Each example of the first batch the model would see: (its whole text, its trained spans)."""
    batch = next(iter(trainer.get_train_dataloader()))
    examples = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        assert (labels[mask == 0] == -100).all()  # padding never carries loss
        trained = labels != -100
        assert (labels[trained] == ids[trained]).all()  # labels are the tokens (the model shifts them)
        spans, current = [], []
        for token, keep in zip(ids[mask == 1].tolist(), trained[mask == 1].tolist()):
            if keep:
                current.append(token)
            elif current:
                spans.append(current)
                current = []
        if current:
            spans.append(current)
        examples.append((tokenizer.decode(ids[mask == 1]), [tokenizer.decode(span) for span in spans]))
    return examples


def test_sft_loss_is_on_the_completion_only(tmp_path):
    from tuiwiz.demo.build import resolve_demo_uri

    def records(name: str) -> list[dict]:
        return [json.loads(line) for line in resolve_demo_uri(f"demo:{name}").read_text().splitlines() if line]

    # alpaca: the prompt (user turn and the assistant header) is masked, the answer and its end are trained
    trainer, info = build_trainer(tmp_path / "alpaca", "quickstart.yaml")
    answers = {r["instruction"]: r["output"] for r in records("alpaca")}
    examples = first_batch(trainer, info.tokenizer)
    assert len(examples) == 8
    for text, spans in examples:
        question = text.split("\n", 1)[1].split("<|im_end|>", 1)[0]
        prompt = chatml([{"role": "user", "content": question}]) + "<|im_start|>assistant\n"
        assert spans == [f"{answers[question]}<|im_end|>\n"], text
        assert text == prompt + spans[0]

    # chat: both assistant turns are trained, the system and user turns and the role headers are not
    trainer, info = build_trainer(tmp_path / "chat", "demo-chat-lora.yaml")
    conversations = {chatml(r["messages"]): r["messages"] for r in records("chat")}
    examples = first_batch(trainer, info.tokenizer)
    assert len(examples) == 8
    for text, spans in examples:
        messages = conversations[text]
        assert [m["role"] for m in messages].count("assistant") == 2
        assert spans == [f"{m['content']}<|im_end|>" for m in messages if m["role"] == "assistant"], text
