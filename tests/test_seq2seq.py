"""Task seq2seq end to end on the built-in tiny T5 (demo-t5): the real CLI, the real detached runner, real
transformers/peft; LoRA, IA3, prompt tuning and full fine-tuning train; evaluation generates and logs exact
match and ROUGE-L; held-out questions are answered after training; merge, chat and export on the result;
bad text-to-text data refused before anything starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuiwiz.demo.build import ANIMALS
from tuiwiz.demo.seq2seq import WORDINGS, fact_questions, records
from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import RunDir, read_state

from .support import PROFILES
from .support.processes import run_cli
from .support.trained_runs import assert_streamed_equals_loaded

PROFILE = "demo-seq2seq.yaml"
# Held-out exact match must beat the untrained model's by this much (measured: 0.0 before, 0.30 after).
MARGIN = 0.2
# method -> its settings over the shipped profile (no evaluation: these check that each trains and reloads)
METHODS = {
    "ia3": ({"type": "ia3"}, {"max_steps": 40, "learning_rate": 0.05}),
    "prompt_tuning": ({"type": "prompt_tuning", "num_virtual_tokens": 8}, {"max_steps": 40, "learning_rate": 0.03}),
    "full": ({"type": "full"}, {"max_steps": 40, "learning_rate": 0.001}),
}


# --- the demo data --------------------------------------------------------------------

def test_held_out_questions_are_never_trained_on_but_their_facts_and_wordings_are():
    train, held_out = records("seq2seq"), records("seq2seq-heldout")
    assert (len(train), len(held_out)) == (160, 80)
    assert not {r["input"] for r in train} & {r["input"] for r in held_out}
    trained_facts = {}
    for r in train:
        trained_facts.setdefault(r["target"], set()).add(r["input"])
    wordings = [w for family in WORDINGS.values() for w in family]
    for r in held_out:
        animal = next(a[0] for a in ANIMALS if r["input"] in {w.format(a=a[0]) for w in wordings})
        # the same fact of the same animal is trained, in the other two wordings of its attribute
        family = next(f for f in WORDINGS.values() if r["input"] in {w.format(a=animal) for w in f})
        others = {w.format(a=animal) for w in family} - {r["input"]}
        assert others <= trained_facts[r["target"]], r
        # and the held-out wording is trained with other animals
        wording = next(w for w in family if w.format(a=animal) == r["input"])
        assert any(t["input"] == wording.format(a=a[0]) for a in ANIMALS for t in train), wording
    assert fact_questions()[1] == held_out  # deterministic


def test_exact_match_normalises_and_rouge_l_counts_words_in_order():
    from tuiwiz.train.text_metrics import exact_match, normalise_answer, rouge_l

    assert normalise_answer("  The  Moo! ") == "moo"
    assert exact_match(["Moo.", "a barn", "hay"], ["moo", "barn", "grass"]) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0
    assert rouge_l(["the cow says moo"], ["the cow says moo"]) == pytest.approx(1.0)
    # longest common subsequence "cow moo": precision 2/2, recall 2/4
    assert rouge_l(["cow moo"], ["the cow says moo"]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert rouge_l(["oink"], ["moo"]) == 0.0


# --- bad data ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows,line,field,message", [
    ([{"input": "What does the cow say?", "target": "moo"}, {"input": "What does the cat say?"}], 2, "target",
     "lacks target"),
    ([{"input": "What does the cow say?", "target": "moo"}, {"input": "  ", "target": "meow"}], 2, "input",
     "'input' is empty"),
])
def test_bad_seq2seq_data_exits_2_naming_file_line_and_field(tmp_path, rows, line, field, message):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    profile = yaml.safe_load((PROFILES / PROFILE).read_text())
    profile["data"] = {"path": str(data), "max_length": 64}
    profile["training"].pop("eval_steps")
    profile["output"]["runs_dir"] = str(tmp_path / "runs")
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    result = run_cli("--profile", path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: {data}:{line}: {field}: " in result.stderr, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_decoder_only_model_is_refused_before_its_weights_load(tmp_path):
    from tuiwiz.errors import UserError

    from .support.runs import build_trainer

    with pytest.raises(UserError) as info:
        build_trainer(tmp_path, PROFILE, model__name_or_path="demo")
    assert info.value.field == "model.name_or_path" and "encoder-decoder" in info.value.message
    assert "llama model, decoder-only" in info.value.message and "demo-t5" in info.value.hint


# --- training -----------------------------------------------------------------------------

def _train(root: Path, name: str, method: dict | None = None, training: dict | None = None) -> RunDir:
    """The shipped profile (changed as given) through `tuiwiz --profile`, in ``root``'s own cache and registry."""
    data = yaml.safe_load((PROFILES / PROFILE).read_text())
    if method is not None:
        data["method"] = method
        data["data"].pop("validation_path")
        data["training"].pop("eval_steps")
        data["training"].pop("num_train_epochs")
    data["training"].update(training or {})
    data["output"]["runs_dir"] = str(root / name / "runs")
    (root / name).mkdir(parents=True)
    profile = root / name / "profile.yaml"
    profile.write_text(yaml.safe_dump(data))
    result = run_cli("--profile", profile, env=_isolated(root))
    [folder] = (root / name / "runs").glob("[!.]*")
    run = RunDir(folder)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    assert read_state(run).status == "completed"
    return run


def _isolated(root: Path) -> dict[str, str]:
    return {"TUIWIZ_CACHE_DIR": str(root / "cache"), "TUIWIZ_STATE_DIR": str(root / "state"), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(name)``: a completed run, trained once per module: "lora" is the shipped profile as shipped
    (with its held-out evaluation), the others METHODS' settings."""
    root = tmp_path_factory.mktemp("seq2seq")
    runs: dict[str, RunDir] = {}

    def get(name: str) -> RunDir:
        if name not in runs:
            runs[name] = _train(root, name) if name == "lora" else _train(root, name, *METHODS[name])
        return runs[name]

    return get


def _loss_curve(run: RunDir) -> list[float]:
    return [e["loss"] for e in read_events(run.events) if e["type"] == "log"]


def _load(folder: Path):
    """A run's output (adapter or whole model), or a model folder, with its tokenizer, as users load them."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if (folder / "adapter_config.json").exists():
        from peft import AutoPeftModelForSeq2SeqLM

        model = AutoPeftModelForSeq2SeqLM.from_pretrained(folder)
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def _greedy(model, tokenizer, inputs: list[str], max_new_tokens: int = 8) -> list[str]:
    import torch

    encoded = tokenizer(inputs, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
    return [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_and_its_output_reloads_and_generates(trained, name):
    run = trained(name)
    curve = _loss_curve(run)
    assert curve[-1] < 0.7 * curve[0], f"loss did not fall enough: {curve[0]:.2f} -> {curve[-1]:.2f}"
    events = read_events(run.events)
    start = next(e for e in events if e["type"] == "run_start")
    assert start["task"] == "seq2seq" and start["method"] == name and start["data_format"] == "seq2seq"
    assert 0 < start["params_trainable"] <= start["params_total"]
    if name == "ia3":  # peft's T5 defaults: keys, values and the feed-forward output
        assert start["target_modules"] == ["k", "v", "wo"]
    meta = json.loads((run.output / "tuiwiz.json").read_text())
    assert meta["task"] == "seq2seq" and meta["method"] == name
    model, tokenizer = _load(run.output)
    assert type(model).__name__ == ("T5ForConditionalGeneration" if name == "full" else "PeftModelForSeq2SeqLM")
    # what was saved is what trained: the reloaded model fits the training targets better than the base
    base = Path(meta["base_model"])
    assert _target_loss(model, tokenizer) < 0.7 * _target_loss(_load(base)[0], tokenizer)
    import torch

    encoded = tokenizer(["What does the cow eat?"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert int(out[0, 0]) == model.config.decoder_start_token_id and out.shape[1] == 5


def _target_loss(model, tokenizer) -> float:
    """The model's loss on the first 32 training targets (T5 shifts the labels into its decoder itself)."""
    import torch

    batch = records("seq2seq")[:32]
    encoded = tokenizer([r["input"] for r in batch], return_tensors="pt", padding=True)
    labels = tokenizer(text_target=[r["target"] for r in batch], return_tensors="pt", padding=True)["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    with torch.no_grad():
        return float(model(**encoded, labels=labels).loss)


@pytest.mark.slow
def test_lora_logs_exact_match_and_rouge_l_and_answers_held_out_questions(trained):
    run = trained("lora")
    curve = _loss_curve(run)
    assert curve[-1] < 0.1 * curve[0], curve
    start = next(e for e in read_events(run.events) if e["type"] == "run_start")
    assert start["target_modules"] == ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]  # auto: every linear layer
    evals = [e for e in read_events(run.events) if e["type"] == "eval"]
    assert len(evals) >= 4 and all("eval_exact_match" in e and "eval_rougeL" in e for e in evals)
    assert evals[-1]["eval_exact_match"] > evals[0]["eval_exact_match"]

    held_out = records("seq2seq-heldout")
    questions, answers = [r["input"] for r in held_out], [r["target"] for r in held_out]
    from tuiwiz.train.text_metrics import exact_match

    base = json.loads((run.output / "tuiwiz.json").read_text())["base_model"]
    before = exact_match(_greedy(*_load(Path(base)), questions), answers)
    after = exact_match(_greedy(*_load(run.output), questions), answers)
    assert after >= before + MARGIN, f"held-out exact match {before:.3f} -> {after:.3f} over {len(held_out)}"
    # the trainer's own evaluation on the same questions (generated in padded batches) agrees
    assert evals[-1]["eval_exact_match"] == pytest.approx(after)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_merged_model_generates_what_the_adapter_does(trained, tmp_path, name):
    from tuiwiz.post.merge import merge_run

    run = trained(name)
    result = merge_run(str(run.path), tmp_path / "merged")
    assert result.max_diff <= result.tolerance < result.changed_diff
    config = json.loads((result.out / "config.json").read_text())
    assert config["architectures"] == ["T5ForConditionalGeneration"] and config["decoder_start_token_id"] == 0
    questions = [r["input"] for r in records("seq2seq-heldout") + records("seq2seq")[:40]]
    merged = _greedy(*_load(result.out), questions)
    assert merged == _greedy(*_load(run.output), questions)
    assert len(set(merged)) > 3  # answers, not one token for every question
    # verification streams T5 block by block from disk: the same logits as the model loaded whole
    base = Path(json.loads((run.output / "tuiwiz.json").read_text())["base_model"])
    assert_streamed_equals_loaded(run, base, adapter=True)
    assert_streamed_equals_loaded(run, result.out, adapter=False)


@pytest.mark.slow
def test_chat_answers_text_to_text(trained, tmp_path):
    from tuiwiz.post.chat import ChatEngine

    run = trained("lora")
    train = {r["input"]: r["target"] for r in records("seq2seq")}
    question = "Which noise does a cow make?"
    engine = ChatEngine(str(run.path)).load()
    assert engine.source.text_to_text and type(engine.model).__name__ == "PeftModelForSeq2SeqLM"
    # the input goes in as it is (with T5's closing </s>), whatever came before it and whatever the system says
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "hay"},
               {"role": "user", "content": question}]
    ids = engine.prompt_ids(history, system="Answer like a pirate.")["input_ids"][0].tolist()
    assert ids == engine.tokenizer(question)["input_ids"] and ids[-1] == engine.tokenizer.eos_token_id
    base, tuned = engine.compare(history, temperature=0, max_new_tokens=8)
    assert tuned == train[question] and base != tuned
    assert engine.last_stats.new_tokens >= 1

    result = subprocess.run([sys.executable, "-m", "tuiwiz", "chat", str(run.path), "--temperature", "0"],
                            input=f"{question}\nThe cat lives where?\n/quit\n", capture_output=True, text=True,
                            env={**os.environ, **_isolated(tmp_path)}, timeout=120)
    assert result.returncode == 0, result.stderr
    replies = [line.split("> ")[-1] for line in result.stdout.splitlines() if line.startswith("you> ")]
    assert replies[:2] == [train[question], train["The cat lives where?"]], result.stdout


@pytest.mark.slow
def test_chat_streams_and_stops_a_prompt_tuning_run(trained):
    """peft deep-copies generate's arguments for virtual tokens on an encoder-decoder: the streamer the reader
    waits on and the stop flag must survive the copy."""
    import threading

    from tuiwiz.post.chat import ChatEngine

    engine = ChatEngine(str(trained("prompt_tuning").path)).load()
    question = [{"role": "user", "content": "What does the cow eat?"}]
    engine.answer(question, temperature=0, max_new_tokens=4, min_new_tokens=4)
    assert engine.last_stats.new_tokens == 4 and not engine.last_stats.stopped
    threading.Timer(0.2, engine.stop).start()
    engine.answer(question, temperature=1.0, max_new_tokens=5000, min_new_tokens=5000)
    assert engine.last_stats.stopped and engine.last_stats.new_tokens < 5000


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gguf", "ollama", "onnx"])
def test_export_refuses_formats_that_hold_no_encoder_decoder(trained, tmp_path, fmt):
    run = trained("lora")
    result = run_cli("export", run.path, "--format", fmt, "--out", tmp_path / "out", env=_isolated(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "encoder-decoder" in result.stderr and "--format merged" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
