"""preference.precompute_ref_log_probs: auto resolves to the cheaper way for the run's rows, a setting the
profile states is kept (tuiwiz/plan/reference_scoring.py)."""

from __future__ import annotations

import pytest

from tuiwiz.plan.reference_scoring import reference_scoring
from tuiwiz.profile.schema import Profile


def dpo(method: str = "lora", precompute="auto", processes: int = 1, **training) -> Profile:
    distributed = {"strategy": "ddp", "num_processes": processes} if processes > 1 else {}
    return Profile.model_validate({"task": "dpo", "method": {"type": method}, "data": {"validation_split": 0.1},
                                   "preference": {"precompute_ref_log_probs": precompute},
                                   "distributed": distributed,
                                   "training": {"per_device_train_batch_size": 8, **training}})


def resolved(profile: Profile, train_rows=160, steps=None, eval_rows=0) -> bool:
    steps = steps if steps is not None else round(train_rows / 8 * profile.training.num_train_epochs)
    return reference_scoring(profile, train_rows=train_rows, total_steps=steps, eval_rows=eval_rows).precompute


@pytest.mark.parametrize(("training", "eval_rows", "expected"), [
    ({"num_train_epochs": 1}, 0, False),  # one pass: the same work, and training starts at once
    ({"num_train_epochs": 1}, 20, False),  # one pass and one evaluation at the epoch's end
    ({"num_train_epochs": 2}, 0, True),  # the second epoch would score every row again
    ({"num_train_epochs": 1.5}, 0, True),
    ({"num_train_epochs": 1, "eval_steps": 5}, 20, True),  # four evaluations of the same 20 rows
    ({"num_train_epochs": 1, "eval_steps": 20}, 20, False),  # one
])
def test_auto_under_adapters_precomputes_where_the_steps_would_score_rows_more_than_once(training, eval_rows,
                                                                                         expected):
    assert resolved(dpo(**training), eval_rows=eval_rows) is expected


def test_auto_with_max_steps_counts_the_rows_the_steps_take():
    assert resolved(dpo(max_steps=10), train_rows=1000, steps=10) is False  # 80 of 1000 rows: scoring all is waste
    assert resolved(dpo(max_steps=300), train_rows=1000, steps=300) is True  # 2400 rows scored in the steps


def test_a_resumed_run_counts_the_steps_it_has_left():
    three_epochs = dpo(num_train_epochs=3)  # 160 rows, 60 steps: 480 rows in the steps against 160 once
    assert reference_scoring(three_epochs, train_rows=160, total_steps=60).precompute
    early = reference_scoring(three_epochs, train_rows=160, total_steps=60, steps_done=20)
    assert early.precompute and "in the 40 steps left after step 20" in early.reason  # 320 rows left
    late = reference_scoring(three_epochs, train_rows=160, total_steps=60, steps_done=45)
    assert not late.precompute and "120 training rows" in late.reason  # 15 steps: fewer rows than one pass
    by_steps = dpo(max_steps=300)
    assert reference_scoring(by_steps, train_rows=1000, total_steps=300, steps_done=100).precompute  # 1600 rows
    assert not reference_scoring(by_steps, train_rows=1000, total_steps=300, steps_done=200).precompute  # 800


def test_the_dpo_recipe_reads_the_resumed_step_from_the_run_folder(tmp_path, capsys):
    from tuiwiz.run.rundir import RunDir
    from tuiwiz.train.recipes.dpo import precompute_reference

    run = RunDir(tmp_path)
    three_epochs = dpo(num_train_epochs=3)
    assert precompute_reference(three_epochs, run, 160, 0, [])  # a fresh run: 60 steps to go
    checkpoint = run.checkpoints / "checkpoint-45"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    assert not precompute_reference(three_epochs, run, 160, 0, [])
    assert "after step 45" in capsys.readouterr().err


def test_auto_under_full_fine_tuning_always_precomputes_and_says_why():
    for method in ("full", "bitfit"):
        scoring = reference_scoring(dpo(method))  # no row counts needed: it is about the second copy
        assert scoring.precompute and "no second copy" in scoring.reason


def test_a_stated_setting_is_kept_whatever_the_counts():
    assert resolved(dpo("lora", True)) is True
    assert resolved(dpo("full", False, num_train_epochs=3)) is False
    assert "is false in the profile" in reference_scoring(dpo("full", False)).reason


def test_auto_without_counts_under_adapters_keeps_the_step_scoring():
    """The planner has no row counts: it counts the reference forward in the step, the heavier case."""
    assert reference_scoring(dpo()).precompute is False


def test_the_reason_names_the_counts():
    reason = reference_scoring(dpo(num_train_epochs=2), train_rows=160, total_steps=40, eval_rows=20).reason
    assert "180 rows" in reason and "320 training rows" in reason and "2 evaluation(s) of 20 rows" in reason


def test_the_profile_reads_auto_true_and_false_and_refuses_others():
    from pydantic import ValidationError

    assert Profile().preference.precompute_ref_log_probs == "auto"
    assert dpo(precompute=True).preference.precompute_ref_log_probs is True
    with pytest.raises(ValidationError, match="precompute_ref_log_probs"):
        dpo(precompute="sometimes")


def test_several_processes_never_precompute():
    """TRL 1.x's pass writes its cache file on the first process only, under a name each process draws for data
    built in memory: auto stays off on several processes, and asking for it is refused, naming the field."""
    from pydantic import ValidationError

    for method in ("lora", "full"):
        scoring = reference_scoring(dpo(method, processes=2, num_train_epochs=3), train_rows=160, total_steps=60)
        assert scoring.precompute is False and "one process only" in scoring.reason
    with pytest.raises(ValidationError, match="precompute_ref_log_probs: true runs on one process only"):
        dpo(precompute=True, processes=2)
    assert dpo(precompute=False, processes=2).preference.precompute_ref_log_probs is False


def test_the_plan_and_the_step_down_follow_the_processes():
    from tuiwiz.plan.fine_tune import task_fields
    from tuiwiz.plan.hardware import probe as probe_hardware
    from tuiwiz.plan.recommend import step_down

    from .test_memory_tasks import llama8b

    assert task_fields("dpo", method="full")["reference"] is False  # precomputed: no copy
    assert task_fields("dpo", method="full", processes=2)["reference"] is True  # a copy on each process
    several = dpo("full", processes=2, per_device_train_batch_size=4)
    step = step_down(several, llama8b(), probe_hardware(snapshot="h100-80gb"))
    assert step.kind != "reference"  # precomputing is not a step it can take there


# every setting, method and process count a profile accepts (true on several processes is refused: above)
@pytest.mark.parametrize(("setting", "method", "processes"), [
    (setting, method, processes) for setting in ("auto", True, False)
    for method in ("lora", "full", "bitfit", "prompt_tuning") for processes in (1, 2)
    if not (setting is True and processes > 1)])
def test_the_plans_rule_is_the_runners_without_counts(setting, method, processes):
    from tuiwiz.plan.reference_scoring import precomputed_without_counts

    profile = dpo(method, setting, processes)
    assert precomputed_without_counts(setting, method, processes) is reference_scoring(profile).precompute
