"""The supervisor's verdict over its ranks, from their result and exit files (no training), and the rank's
waiting parent that writes how the rank's process ended."""

import json
import subprocess
import sys

from tuiwiz.train.supervisor import verdict


def done(rank, status="completed", t=10.0, **fields):
    return {"rank": rank, "status": status, "time": t, **fields}


def died(rank, signal, t=20.0):
    return {"rank": rank, "signal": signal, "code": -6, "time": t}


def test_every_rank_completed_and_exited_cleanly():
    outcome = verdict({0: done(0), 1: done(1)}, {0: None, 1: None}, 0)
    assert (outcome.status, outcome.failure, outcome.warning) == ("completed", None, None)


def test_a_rank_aborting_after_every_rank_finished_completes_with_a_warning():
    # ended by the launcher after its result, once its interpreter was finalizing (no handler left)
    terminated = {"rank": 0, "signal": "SIGTERM", "code": -15, "time": 21.0}
    outcome = verdict({0: done(0), 1: done(1)}, {0: terminated, 1: died(1, "SIGABRT")}, 1)
    assert outcome.status == "completed" and outcome.failure is None
    assert outcome.warning == "rank 1 aborted (SIGABRT) after it had finished; the saved model is complete"


def test_a_stopped_run_keeps_its_checkpoint_when_a_rank_crashes_on_exit():
    results = {0: done(0, "stopped", step=7, checkpoint="c/checkpoint-7"), 1: done(1, "stopped", step=7)}
    outcome = verdict(results, {0: died(0, "SIGSEGV"), 1: None}, 1)
    assert outcome.status == "stopped" and outcome.main["checkpoint"] == "c/checkpoint-7"
    assert outcome.warning == "rank 0 crashed (SIGSEGV) after it had finished; the checkpoint is complete"


def test_a_bad_launcher_code_after_every_result_is_a_warning_even_without_a_signal():
    outcome = verdict({0: done(0), 1: done(1)}, {0: None, 1: None}, 1)
    assert outcome.status == "completed"
    assert outcome.warning == ("the launcher exited with code 1 after every rank had finished; "
                               "the saved model is complete")


def test_a_rank_dying_before_its_result_is_named_with_its_signal():
    results = {0: done(0, "terminated", t=21.0), 1: None}
    outcome = verdict(results, {0: None, 1: died(1, "SIGABRT")}, 1)
    assert outcome.status == "failed"
    assert (outcome.failure.kind, outcome.failure.message) == ("crash", "rank 1 aborted (SIGABRT) before it "
                                                                        "reported a result")
    assert "logs/rank1.log" in outcome.failure.hint


def test_the_first_rank_to_die_is_the_cause_not_the_one_killed_after_it():
    exits = {0: died(0, "SIGKILL", t=30.0), 1: died(1, "SIGSEGV", t=20.0)}
    outcome = verdict({0: None, 1: None}, exits, 1)
    assert outcome.failure.message == "rank 1 crashed (SIGSEGV) before it reported a result"
    ended = verdict({0: None, 1: None}, {0: died(0, "SIGTERM", t=10.0), 1: died(1, "SIGABRT", t=20.0)}, 1)
    assert ended.failure.message == "rank 1 aborted (SIGABRT) before it reported a result"
    killed = verdict({0: done(0, "terminated"), 1: None}, {0: None, 1: died(1, "SIGKILL")}, 1)
    assert (killed.failure.kind, killed.failure.message) == ("killed", "rank 1 was killed (SIGKILL) before it "
                                                                       "reported a result")


def test_a_rank_gone_without_an_exit_file_reads_as_before():
    outcome = verdict({0: done(0, "terminated"), 1: None}, {0: None, 1: None}, 1)
    assert outcome.failure.kind == "killed"
    assert outcome.failure.message == "rank 1 ended without a result (killed by a signal, or out of memory)"


def test_a_rank_dying_after_its_result_while_another_had_not_finished_fails_naming_it():
    outcome = verdict({0: done(0, "terminated", t=21.0), 1: done(1)}, {0: None, 1: died(1, "SIGABRT")}, 1)
    assert outcome.status == "failed" and outcome.failure.kind == "crash"
    assert outcome.failure.message == ("rank 1 aborted (SIGABRT) after it had finished, and the launcher ended "
                                       "the others (rank 0) before they had")


def test_an_exception_on_a_rank_still_wins_over_the_ranks_ended_because_of_it():
    failed = done(1, "failed", failure={"kind": "crash", "message": "RuntimeError: boom", "hint": None})
    outcome = verdict({0: done(0, "terminated", t=21.0), 1: failed}, {0: None, 1: None}, 1)
    assert outcome.failure.message == "rank 1: RuntimeError: boom"


PARENT = """
import os, sys
from pathlib import Path
from tuiwiz.run.rundir import RunDir
from tuiwiz.train.worker import _wait_and_record, logs_dir

run = RunDir(Path(sys.argv[1]))
logs_dir(run).mkdir()
child = os.fork()
if child == 0:
    os.abort()
sys.exit(_wait_and_record(run, 1, child))
"""


def test_the_ranks_parent_writes_how_its_child_ended_and_exits_the_same_way(tmp_path):
    result = subprocess.run([sys.executable, "-c", PARENT, str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 128 + 6, result.stderr  # SIGABRT dumps core: an exit code, not the signal
    written = json.loads((tmp_path / "logs" / "rank1.exit.json").read_text())
    assert (written["rank"], written["signal"], written["code"]) == (1, "SIGABRT", -6)
