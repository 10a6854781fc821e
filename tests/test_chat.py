"""The chat engine (streaming, stop, base vs fine-tuned, several adapters, memory check) and the REPL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuiwiz.errors import UserError

from .support import ROOT
from .support.processes import as_foreground
from .support.trained_runs import merged_once

QUESTION = [{"role": "user", "content": "What sound does the cow make?"}]


@pytest.fixture(scope="module")
def engine(trained_run):
    from tuiwiz.post.chat import ChatEngine

    return ChatEngine(str(trained_run("lora").path)).load()


@pytest.mark.slow
def test_stream_yields_pieces_while_generating(engine):
    import time

    arrivals = []
    for piece in engine.stream(QUESTION, adapter=None, temperature=0, max_new_tokens=40):
        arrivals.append((time.perf_counter(), piece, engine.generating))
    end = time.perf_counter()
    stats = engine.last_stats
    assert len(arrivals) >= 3
    assert arrivals[0][2], "the first piece came after generation had ended"
    assert arrivals[0][0] < end and stats.first_token_s is not None and stats.first_token_s < stats.seconds
    assert stats.new_tokens >= len(arrivals) and not stats.stopped
    assert not engine.generating


@pytest.mark.slow
def test_the_system_prompt_reaches_the_model(engine):
    """The system prompt is rendered by the tokenizer's chat template ahead of the conversation, replacing a
    system message the conversation carried, and it conditions the answer's logits."""
    import torch

    text = engine.tokenizer.decode(engine.prompt_ids(QUESTION, system="Answer like a pirate.")["input_ids"][0])
    assert text.index("Answer like a pirate.") < text.index("What sound does the cow make?")
    replaced = engine.prompt_ids([{"role": "system", "content": "old rule"}, *QUESTION], system="new rule")
    replaced = engine.tokenizer.decode(replaced["input_ids"][0])
    assert "new rule" in replaced and "old rule" not in replaced
    with torch.no_grad():
        plain = engine.model(**engine.prompt_ids(QUESTION)).logits[0, -1]
        system = engine.model(**engine.prompt_ids(QUESTION, system="Answer like a pirate.")).logits[0, -1]
    assert not torch.allclose(plain, system)


@pytest.mark.slow
def test_stop_ends_a_generation_early(engine):
    pieces = []
    for piece in engine.stream(QUESTION, adapter=None, temperature=0, max_new_tokens=300):
        pieces.append(piece)
        if len(pieces) == 2:
            engine.stop()
    assert engine.last_stats.stopped and engine.last_stats.new_tokens < 20
    # leaving the loop early stops it too, and the engine is free for the next answer
    for _ in engine.stream(QUESTION, adapter=None, temperature=0, max_new_tokens=300):
        break
    assert engine.last_stats.stopped and not engine.generating
    assert engine.answer(QUESTION, temperature=0, max_new_tokens=8)


@pytest.mark.slow
def test_base_and_fine_tuned_answer_differently_and_the_fine_tuned_learned(engine):
    base, tuned = engine.compare(QUESTION, temperature=0, max_new_tokens=16)
    assert base != tuned
    # 30 steps teach the answers' shape ("The cow says moo."), not yet every fact
    assert tuned.startswith("The") and not base.startswith("The"), (base, tuned)
    assert engine.active_adapter == engine.source.label  # compare leaves the adapter on


@pytest.mark.slow
def test_several_adapters_on_one_base(trained_run, engine):
    from tuiwiz.post.chat import ChatEngine

    dora = trained_run("dora")
    name = engine.add_adapter(str(dora.path), name="dora")
    assert set(engine.adapters) == {engine.source.label, "dora"}
    settings = {"temperature": 0, "max_new_tokens": 12}
    first = engine.answer(QUESTION, **settings)
    second = engine.answer(QUESTION, adapter=name, **settings)
    assert engine.active_adapter == engine.source.label  # a per-call adapter is put back
    alone = ChatEngine(str(dora.path)).load()
    assert second == alone.answer(QUESTION, **settings)  # the same answer as the DoRA run loaded by itself
    engine.set_adapter("dora")
    assert engine.answer(QUESTION, **settings) == second
    engine.set_adapter(engine.source.label)
    assert engine.answer(QUESTION, **settings) == first
    with pytest.raises(UserError, match="no adapter"):
        engine.set_adapter("nope")
    with pytest.raises(UserError, match="already loaded"):
        engine.add_adapter(str(dora.path), name="dora")


@pytest.mark.slow
def test_a_merged_model_answers_as_base_plus_adapter(trained_run, engine):
    from tuiwiz.post.chat import ChatEngine

    run = trained_run("lora")
    merged = ChatEngine(str(merged_once(run))).load()
    assert merged.adapters == ()
    settings = {"temperature": 0, "max_new_tokens": 12}
    assert merged.answer(QUESTION, **settings) == engine.answer(QUESTION, adapter=run.run_id, **settings)
    with pytest.raises(UserError, match="no adapter to switch off"):
        merged.answer(QUESTION, adapter=None)


@pytest.mark.slow
def test_refuses_a_model_that_does_not_fit(trained_run):
    from tuiwiz.post.chat import ChatEngine

    run = trained_run("lora")
    small = ChatEngine(str(run.path), memory_budget_mb=1)
    with pytest.raises(UserError) as info:
        small.load()
    assert info.value.kind == "resources" and "MiB" in info.value.message
    assert not small.loaded


def _repl(args, stdin: str, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "tuiwiz", "chat", *map(str, args)], input=stdin, cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_repl_through_stdin(trained_run):
    run = trained_run("lora")
    result = _repl([run.path, "--compare", "--temperature", "0", "--max-new-tokens", "12"],
                   "What sound does the cow make?\n/clear\nWhat color is the cat?\n/quit\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("base> ") == 2 and out.count(f"{run.run_id}> ") == 2
    assert "(conversation cleared)" in out
    assert out.split(f"{run.run_id}> ")[1].startswith("The"), out

    refused = _repl([run.path], "hello\n", env={"TUIWIZ_MEMORY_BUDGET_MB": "1"})
    assert refused.returncode == 2 and "free" in refused.stderr and "Traceback" not in refused.stderr


def test_an_answer_is_not_busy_once_its_last_event_is_out():
    """The app sends its next request on seeing ``done``; the answering thread may not have exited yet."""
    import queue
    import threading

    from tuiwiz.post.chat_server import _Answer

    answer, seen = _Answer(), queue.Queue()
    finishing, lingering = threading.Event(), threading.Event()

    def linger(finish):
        finishing.wait(5)
        finish(lambda: seen.put("done"))
        lingering.wait(5)  # the thread lives on after its final event

    assert answer.start(linger)
    assert answer.busy and not answer.start(linger)  # while it streams, a second answer is refused
    finishing.set()
    assert seen.get(timeout=5) == "done"
    assert not answer.busy and answer.start(lambda finish: finish(lambda: None))
    lingering.set()
    answer.join()


@pytest.mark.slow
def test_jsonl_server_answers_and_names_bad_requests(tmp_path_factory, trained_run):
    """`tuiwiz chat RUN --jsonl`, the app's protocol: a malformed request is an input error with its id,
    the next request is still answered, and only JSON lines reach stdout."""
    import json

    run = trained_run("lora")
    question = [{"role": "user", "content": "What sound does the cow make?"}]
    requests = [{"op": "ask", "id": 1}, {"op": "ask", "id": 2, "messages": question, "max_new_tokens": "x"},
                {"op": "nope"}]
    first = "".join(json.dumps(r) + "\n" for r in requests)
    stderr = open(tmp_path_factory.mktemp("jsonl") / "stderr.txt", "w+")  # a file: an undrained pipe can fill
    proc = subprocess.Popen([sys.executable, "-m", "tuiwiz", "chat", str(run.path), "--jsonl"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    import threading

    watchdog = threading.Timer(240, proc.kill)  # a protocol that waits on both ends fails, not hangs
    watchdog.start()
    proc.stdin.write(first)
    proc.stdin.flush()
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "error" and "unknown op" in events[-1]["message"]:
            proc.stdin.write(json.dumps({"op": "ask", "id": 3, "messages": question, "temperature": 0,
                                         "max_new_tokens": 8}) + "\n")
            proc.stdin.flush()
        if events[-1]["event"] == "done":
            proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            proc.stdin.close()
    code = proc.wait(timeout=60)
    watchdog.cancel()
    stderr.seek(0)
    assert code == 0, stderr.read()[-2000:]
    stderr.close()
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["loading", "ready"] and kinds[-1] == "done"
    errors = [e for e in events if e["event"] == "error"]
    assert [(e.get("id"), e["kind"]) for e in errors] == [(1, "input"), (2, "input"), (None, "input")]
    assert "messages" in errors[0]["message"] and "'x'" in errors[1]["message"]
    answer = "".join(e["text"] for e in events if e["event"] == "token" and e["id"] == 3)
    assert answer.startswith("The") and events[-1]["id"] == 3 and events[-1]["tokens"] <= 8


@pytest.mark.slow
def test_repl_ctrl_c_stops_the_answer_and_the_repl_goes_on(trained_run):
    """Ctrl-C (SIGINT, as the terminal sends it) during an answer ends that answer, marked [stopped]; the
    REPL asks for the next prompt. A sampled answer may end by itself before the signal lands, and a
    Ctrl-C at the prompt quits (as it should): then it is tried again in a fresh REPL."""
    import os
    import signal
    import threading
    import time

    run = trained_run("lora")
    tries = 4
    for _ in range(tries):
        proc = subprocess.Popen([sys.executable, "-m", "tuiwiz", "chat", str(run.path), "--base", "--temperature",
                                 "1.0", "--max-new-tokens", "3000"], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=0,
                                preexec_fn=as_foreground)
        out: list[str] = []
        reader = threading.Thread(target=lambda out=out, proc=proc: out.extend(iter(lambda: proc.stdout.read(1), "")),
                                  daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 120
            while "you> " not in "".join(out) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.stdin.write("Tell me a very long story about a cow.\n")
            proc.stdin.flush()
            while len("".join(out).partition("base> ")[2]) < 3 and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGINT)
            while "".join(out).count("you> ") < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            answer = "".join(out).partition("base> ")[2]
            if answer.partition("\n")[0].endswith(" [stopped]") and proc.poll() is None:
                proc.stdin.write("/quit\n")
                proc.stdin.flush()
                assert proc.wait(timeout=60) == 0
                assert "Traceback" not in proc.stderr.read()
                break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    else:
        raise AssertionError(f"no answer was still going when Ctrl-C came, in {tries} tries: {''.join(out)!r}")
