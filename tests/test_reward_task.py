"""Task reward end to end on the demo model: the real CLI trains a reward model on demo:preference with the
held-out pairs as evaluation data, and `tuiwiz score` reads it back."""

import json

import pytest

from tuiwiz.run.events import read_events
from tuiwiz.run.rundir import RunDir, RunState, read_state, write_state
from tuiwiz.tasks import TASKS

from .support.processes import run_cli
from .support.runs import only_run, write_profile


def held_out_pairs() -> list[dict]:
    from tuiwiz.demo.build import resolve_demo_uri

    return [json.loads(line) for line in resolve_demo_uri("demo:preference-heldout").read_text().splitlines() if line]


@pytest.mark.slow
def test_a_reward_model_ranks_held_out_pairs_and_scores_them(tmp_path):
    profile = write_profile(tmp_path, "demo-reward.yaml", output__report_to=[])
    result = run_cli("--profile", profile)
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    assert read_state(run).status == "completed"
    events = read_events(run.events)
    logged = [e["task_metrics"] for e in events if e["type"] == "log"]
    curves = {name for name in TASKS["reward"].metrics if not name.startswith("eval_")}  # eval_*: from eval events
    assert all(curves <= set(m) for m in logged)  # the monitor's curves exist by these names
    final_eval = [e for e in events if e["type"] == "eval"][-1]
    pairs = held_out_pairs()
    start = next(e for e in events if e["type"] == "run_start")
    assert start["eval_examples"] == len(pairs) == 27
    # three full batches of 9, so TRL's mean over batches is the accuracy over the pairs
    assert final_eval["eval_accuracy"] >= 2 / 3, final_eval  # measured 19 of 27 (0.70)
    adapter = json.loads((run.output / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]  # the head is saved

    # `tuiwiz score` reloads the output and ranks each held-out pair: chosen above rejected on most
    items = tmp_path / "pairs.jsonl"
    items.write_text("".join(json.dumps({"prompt": p["prompt"], "completion": p[side]}) + "\n"
                             for p in pairs for side in ("chosen", "rejected")))
    scored = run_cli("score", run.path, "--file", items)
    assert scored.returncode == 0, scored.stderr
    scores = [float(line) for line in scored.stdout.split()]
    assert len(scores) == 2 * len(pairs)
    right = [chosen > rejected for chosen, rejected in zip(scores[::2], scores[1::2])]
    assert sum(right) / len(pairs) == pytest.approx(final_eval["eval_accuracy"], abs=1e-6)
    # the style ("Sure!" or not) carries over to new prompts, every time; a wrong fact about a held-out
    # question is a harder call for a model that knew no facts before (measured 5 of 13)
    style = [ok for ok, pair in zip(right, pairs) if not pair["rejected"].startswith("Sure! ")]
    assert len(style) == 14 and all(style)

    # the same score from --prompt/--completion, from the output folder, and from peft's own loader
    first = pairs[0]
    direct = run_cli("score", run.output, "--prompt", first["prompt"], "--completion", first["chosen"],
                     "--completion", first["rejected"])
    assert direct.returncode == 0, direct.stderr
    assert [float(v) for v in direct.stdout.split()] == pytest.approx(scores[:2], abs=1e-3)
    assert peft_score(run.output, first["prompt"], first["chosen"]) == pytest.approx(scores[0], abs=1e-3)

    # the Score screen's server: the model loads once, each request is scored as the command scores it
    served = serve_scores(run.path, [{"prompt": first["prompt"], "completion": first["chosen"]},
                                     {"prompt": first["prompt"], "completion": ""},
                                     {"prompt": first["prompt"], "completion": first["rejected"]}])
    kinds = [e["event"] for e in served]
    assert kinds.count("loading") == 1 and kinds.count("ready") == 1, served
    answers = {e["id"]: e for e in served if "id" in e}
    assert [answers[1]["score"], answers[3]["score"]] == pytest.approx(scores[:2], abs=1e-3)
    assert answers[2]["event"] == "error" and "completion" in answers[2]["message"]
    assert served[-1] == {"event": "exit", "code": 0, "stderr": served[-1]["stderr"]}


def serve_scores(run_path, requests: list[dict]) -> list[dict]:
    """The events of a real `tuiwiz score RUN --jsonl` given ``requests`` one after another, then quit."""
    import queue

    from tuiwiz.post.jsonl_client import JsonlProcess

    events: queue.Queue = queue.Queue()
    server = JsonlProcess(["score", str(run_path)], events.put)
    seen = []

    def until(*kinds: str) -> dict:
        while True:
            event = events.get(timeout=300)
            seen.append(event)
            if event["event"] in (*kinds, "exit"):
                return event

    assert until("ready")["event"] == "ready", seen
    for rid, request in enumerate(requests, 1):
        server.send("score", id=rid, **request)
        assert until("score", "error").get("id") == rid, seen
    server.close()
    until()
    return seen


def peft_score(output, prompt: str, completion: str) -> float:
    """The score as a peft user reloads the adapter, the text rendered by the chat template."""
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoPeftModelForSequenceClassification.from_pretrained(output, num_labels=1).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": completion}], tokenize=False)
    with torch.no_grad():
        return float(model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0])


def fake_run(folder, task: str) -> RunDir:
    """A completed run's state and output/tuiwiz.json (no weights: it is refused before any load)."""
    run = RunDir(folder)
    run.output.mkdir(parents=True)
    write_state(run, RunState(run_id=folder.name, status="completed"))
    (run.output / "tuiwiz.json").write_text(json.dumps({"base_model": "demo", "method": "lora", "task": task}))
    return run


def test_score_refuses_a_run_that_is_not_a_reward_model(tmp_path):
    run = fake_run(tmp_path / "sft-run", "sft")
    result = run_cli("score", run.path, "--text", "hello")
    assert result.returncode == 2
    assert "trained with task sft, not reward" in result.stderr
    assert f"tuiwiz chat {run.path}" in result.stderr  # what to do with it instead
    assert sorted(p.name for p in run.path.iterdir()) == ["output", "state.json"]  # nothing written


@pytest.mark.parametrize("args,message", [
    (["--prompt", "hi"], "--prompt and --completion go together"),
    (["--completion", "hi"], "--prompt and --completion go together"),
    ([], "nothing to score"),
    (["--file", "items.jsonl"], "items.jsonl:2: completion: 'completion' should be non-empty text"),
    (["--file", "other.jsonl"], "other.jsonl:1: a record to score has prompt and completion, or text"),
])
def test_score_refuses_bad_input_before_loading_a_model(tmp_path, args, message):
    run = fake_run(tmp_path / "rm", "reward")  # no weights: a load would fail with a traceback, not exit 2
    (tmp_path / "items.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": ""}\n')
    (tmp_path / "other.jsonl").write_text('{"question": "a"}\n')
    result = run_cli("score", run.path, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
