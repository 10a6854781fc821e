"""Task grpo end to end on the demo model: the real CLI samples completions of demo:arithmetic prompts with
transformers' generate, scores them with the profile's rewards, and trains a few steps (GRPO and RLOO);
the samples reach the event log with their rewards. Steps and lengths are tiny: this checks the wiring,
bench/demo_grpo.py measures the learning, on the data of profiles/demo-grpo.yaml checked here too."""

import json
import re
import textwrap

import pytest
import yaml

from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import RunDir, read_state
from tuiwiz.tasks import TASKS

from .support import PROFILES
from .support.processes import run_cli
from .support.runs import generate, only_run

LAST_WORD = r"(\w+)\W*$"


def grpo_profile(folder, rewards: list[dict], steps: int = 3, **grpo) -> str:
    profile = {
        "version": 1, "task": "grpo", "model": {"name_or_path": "demo"},
        "data": {"path": "demo:arithmetic", "max_length": 64},
        "method": {"type": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "grpo": {"rewards": rewards, "num_generations": 4, "max_completion_length": 8, "log_completions": 3, **grpo},
        "training": {"max_steps": steps, "learning_rate": 0.0003, "per_device_train_batch_size": 8,
                     "logging_steps": 1, "save_steps": 1000},
        "output": {"runs_dir": str(folder / "runs"), "report_to": []},
    }
    folder.mkdir(exist_ok=True)
    path = folder / "grpo.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return str(path)


def completed(result, run: RunDir) -> list[dict]:
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    assert read_state(run).status == "completed"
    return read_events(run.events)


@pytest.mark.slow
def test_grpo_trains_on_exact_answer_and_format_rewards_and_shows_its_samples(tmp_path):
    rewards = [{"type": "exact_answer", "pattern": LAST_WORD},
               {"type": "format", "pattern": r"^\w+ plus \w+ is \w+\.$", "weight": 0.5}]
    result = run_cli("--profile", grpo_profile(tmp_path, rewards))
    run = only_run(tmp_path)
    events = completed(result, run)
    start = next(e for e in events if e["type"] == "run_start")
    assert start["task"] == "grpo" and start["data_format"] == "prompt" and start["max_steps"] == 3

    logs = [e for e in events if e["type"] == "log"]
    assert [e["step"] for e in logs] == [1, 2, 3]
    for log in logs:
        metrics = log["task_metrics"]
        assert set(TASKS["grpo"].metrics) <= set(metrics)  # the monitor's curves exist by these names
        assert {"rewards/exact_answer/mean", "rewards/format/mean"} <= set(metrics)
        expected = metrics["rewards/exact_answer/mean"] + 0.5 * metrics["rewards/format/mean"]
        assert metrics["reward"] == pytest.approx(expected, abs=1e-5)  # summed by weight

    samples = [e for e in events if e["type"] == "samples"]
    assert [e["step"] for e in samples] == [1, 2, 3]  # one at each logging step
    answers = {json.loads(line)["prompt"]: json.loads(line)["answer"] for line in arithmetic_lines()}
    for event in samples:
        assert 1 <= len(event["samples"]) <= 3
        for sample in event["samples"]:
            assert sample["prompt"] in answers  # the question, not its chat rendering
            assert set(sample["rewards"]) == {"exact_answer", "format"}
            answer, completion = answers[sample["prompt"]], sample["completion"]
            if sample["rewards"]["exact_answer"] == 1.0:
                assert answer in completion.lower(), sample
            if re.fullmatch(rf".* is {answer}\.", completion):
                assert sample["rewards"]["exact_answer"] == 1.0, sample
            assert sample["reward"] == pytest.approx(sample["rewards"]["exact_answer"]
                                                     + 0.5 * sample["rewards"]["format"])
    generate(run.output, "What is two plus three?")  # the adapter reloads and answers


def arithmetic_lines() -> list[str]:
    from tuiwiz.demo.build import resolve_demo_uri

    return resolve_demo_uri("demo:arithmetic").read_text().splitlines()


@pytest.mark.slow
def test_rloo_runs_with_the_same_rewards(tmp_path):
    result = run_cli("--profile", grpo_profile(tmp_path, [{"type": "exact_answer", "pattern": LAST_WORD},
                                                          {"type": "length", "target": 24, "weight": 0.2}],
                                               steps=2, algorithm="rloo"))
    run = only_run(tmp_path)
    events = completed(result, run)
    metrics = [e["task_metrics"] for e in events if e["type"] == "log"]
    assert len(metrics) == 2 and all({"reward", "rewards/length/mean"} <= set(m) for m in metrics)
    assert all(-1.0 <= m["rewards/length/mean"] <= 0.0 for m in metrics)
    assert (run.output / "adapter_model.safetensors").exists()


@pytest.fixture
def reward_run(tmp_path) -> RunDir:
    """A small reward model trained on demo:preference (a few steps: the wiring, not its accuracy)."""
    folder = tmp_path / "reward"
    folder.mkdir()
    data = yaml.safe_load((PROFILES / "demo-reward.yaml").read_text())
    data["data"].pop("validation_path")
    data["training"].update(max_steps=10, num_train_epochs=1)
    data["output"] = {"runs_dir": str(folder / "runs"), "report_to": []}
    (folder / "reward.yaml").write_text(yaml.safe_dump(data))
    result = run_cli("--profile", folder / "reward.yaml")
    run = only_run(folder)
    completed(result, run)
    return run


@pytest.mark.slow
def test_grpo_with_a_reward_model_and_a_trusted_reward_function(tmp_path, reward_run):
    """RLHF's two parts (a trained reward model, then GRPO against it) with a user's own function beside it,
    which gets the data's answer column as TRL passes it."""
    tmp_path = tmp_path / "grpo"
    tmp_path.mkdir()
    (tmp_path / "mine.py").write_text(textwrap.dedent(f"""
        import json

        def names_the_answer(prompts, completions, answer, **kwargs):
            with open({str(tmp_path / "calls.jsonl")!r}, "a") as log:
                call = {{"answer": answer, "completion": completions[0], "keys": sorted(kwargs)}}
                log.write(json.dumps(call) + "\\n")
            return [float(a in c[0]["content"]) for a, c in zip(answer, completions)]
    """))
    rewards = [{"type": "reward_model", "path": str(reward_run.output), "weight": 0.1},
               {"type": "python", "file": "mine.py", "function": "names_the_answer"}]
    result = run_cli("--profile", grpo_profile(tmp_path, rewards, steps=2, trust_reward_code=True), cwd=tmp_path)
    run = only_run(tmp_path)
    events = completed(result, run)
    metrics = [e["task_metrics"] for e in events if e["type"] == "log"]
    assert all({"rewards/reward_model/mean", "rewards/names_the_answer/mean"} <= set(m) for m in metrics)
    assert any(m["rewards/reward_model/std"] > 0 for m in metrics)  # the reward model tells completions apart

    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2  # once a step
    answers = {json.loads(line)["answer"] for line in arithmetic_lines()}
    assert all(set(call["answer"]) <= answers for call in calls)
    assert calls[0]["completion"][0]["role"] == "assistant"  # chat completions, as TRL hands them over
    assert {"completion_ids", "trainer_state"} <= set(calls[0]["keys"])

    samples = [s for e in events if e["type"] == "samples" for s in e["samples"]]
    assert samples and all(set(s["rewards"]) == {"reward_model", "names_the_answer"} for s in samples)
    # the reward model's share is its score of prompt + completion, as `tuiwiz score` gives it
    first = samples[0]
    scored = run_cli("score", reward_run.path, "--prompt", first["prompt"], "--completion", first["completion"])
    assert scored.returncode == 0, scored.stderr
    assert float(scored.stdout) == pytest.approx(first["rewards"]["reward_model"], abs=1e-3)


def test_the_demo_grpo_task_splits_pairs_of_number_words_three_ways_and_rewards_the_bigger_one():
    """profiles/demo-grpo.yaml: SFT on demo:compare-sft, GRPO on demo:compare, demo:compare-heldout for neither.
    A pair's two orders stay in one part, so no part holds a question another part answers."""
    from tuiwiz.demo.build import NUMBERS
    from tuiwiz.demo.compare import questions, records, the_two_words
    from tuiwiz.profile.pipeline import load_pipeline

    parts = {}
    for name in ("compare-sft", "compare", "compare-heldout"):
        rows = questions(name)
        pairs = [the_two_words(r["prompt"]) for r in rows]
        assert all(r["answer"] == max(pair, key=NUMBERS.index) for r, pair in zip(rows, pairs))
        parts[name] = {frozenset(pair) for pair in pairs}
        assert len(rows) == 2 * len(parts[name])  # both orders of every pair
        assert sum(r["answer"] == pair[0] for r, pair in zip(rows, pairs)) == len(parts[name])  # first half the time
    assert not parts["compare-sft"] & parts["compare"] and not parts["compare-heldout"] & (
        parts["compare-sft"] | parts["compare"])
    assert len(set().union(*parts.values())) == len(NUMBERS) * (len(NUMBERS) - 1) // 2  # every pair, once
    assert min(len(p) for p in parts.values()) >= 40
    assert {w for pair in parts["compare"] for w in pair} == set(NUMBERS)  # GRPO meets every word

    sft = records("compare-sft")  # the reply SFT teaches is what the profile's reward accepts
    assert [(r["instruction"], r["output"]) for r in sft] == [(q["prompt"], q["answer"] + ".")
                                                             for q in questions("compare-sft")]
    stages = {s.name: s.profile for s in load_pipeline(PROFILES / "demo-grpo.yaml").stages}
    assert stages["sft"].data.path == "demo:compare-sft" and stages["grpo"].data.path == "demo:compare"
    [reward] = stages["grpo"].grpo.rewards
    assert reward.type == "exact_answer"
    for row in sft:  # the pattern takes the answer out of the reply SFT teaches
        assert re.search(reward.pattern, row["output"]).group(1) == row["output"].rstrip(".")
