"""GRPO's rewards without training: the built-in reward functions on hand-written completions, the samples
they leave for the monitor, a user's reward file, and every refusal before a run dir exists (through the
real CLI: exit 2, the profile's file and field named, nothing written)."""

import json
import textwrap

import pytest

from tuiwiz.profile.schema import ExactAnswerReward, FormatReward, LengthReward, ModelReward, PythonReward
from tuiwiz.run.rundir import RunDir, RunState, write_state

from .support.processes import run_cli

LAST_WORD = r"(\w+)\W*$"


def chat(text: str) -> list[dict]:
    """A completion as TRL hands conversational ones over."""
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("pattern,completion,answer,expected", [
    (None, "So the total is 42.", "42", 1.0),  # the default: the last number
    (None, "12 apples, then 30 more: 42 in all!", "42", 1.0),
    (None, "It is -7.", "-7", 1.0),  # the sign is part of the answer
    (None, "It is 7.", "-7", 0.0),
    (None, "It is 41.", "42", 0.0),
    (None, "no number here", "42", 0.0),
    (None, "  3.5  ", "3.5", 1.0),
    (LAST_WORD, "two plus three is Five!", "five", 1.0),  # case and the closing punctuation do not count
    (LAST_WORD, "two plus three is five.", " FIVE. ", 1.0),
    (LAST_WORD, "two plus three is six.", "five", 0.0),
    (LAST_WORD, chat("two plus three is five."), "five", 1.0),
    (r"answer: (\w+)", "answer: Yes, because ...", "yes", 1.0),  # the first group, not the whole match
    (r"\d+", "I think 17 or so", "17", 1.0),  # no group: the whole match
])
def test_exact_answer_extracts_and_normalises(pattern, completion, answer, expected):
    from tuiwiz.train.rewards import exact_answer_reward

    reward = ExactAnswerReward() if pattern is None else ExactAnswerReward(pattern=pattern)
    assert exact_answer_reward(reward)(prompts=["q"], completions=[completion], answer=[answer]) == [expected]


def test_exact_answer_leaves_rows_without_an_answer_unscored():
    from tuiwiz.train.rewards import exact_answer_reward

    scored = exact_answer_reward(ExactAnswerReward())(prompts=["a", "b"], completions=["1", "2"], answer=["1", None])
    assert scored == [1.0, None]  # None: TRL leaves it out of the group's baseline


def test_format_and_length_rewards():
    from tuiwiz.train.rewards import format_reward, length_reward

    matches = format_reward(FormatReward(pattern=r"^\w+ plus \w+ is \w+\.$"))
    completions = ["two plus three is five.", "two plus three is five. Also", chat("one plus one is two."), "five"]
    assert matches(prompts=["q"] * 4, completions=completions) == [1.0, 0.0, 1.0, 0.0]

    length = length_reward(LengthReward(target=10))
    texts = ["x" * n for n in (10, 5, 15, 20, 40, 0)]
    assert length(prompts=["q"] * 6, completions=texts) == [0.0, -0.5, -0.5, -1.0, -1.0, -1.0]


def test_reward_names_are_unique():
    from tuiwiz.train.rewards import reward_names

    rewards = [ExactAnswerReward(), FormatReward(pattern="a"), FormatReward(pattern="b"),
               PythonReward(file="r.py", function="brevity"), ModelReward(path="runs/rm")]
    assert reward_names(rewards) == ["exact_answer", "format", "format_2", "brevity", "reward_model"]


def test_the_recorder_keeps_the_last_batch_with_each_share_and_the_weighted_total():
    from tuiwiz.train.rewards import SampleRecorder

    recorder = SampleRecorder(["exact", "form"], [1.0, 0.5])
    exact = recorder.wrap("exact", lambda prompts, completions, answer, **kw: [float(c == a) for c, a in
                                                                             zip(completions, answer)])
    form = recorder.wrap("form", lambda prompts, completions, **kw: [None if c == "?" else 1.0 for c in completions])
    assert (exact.__name__, form.__name__) == ("exact", "form")  # TRL names the curves after them
    for batch in (["old", "older"], ["4", "5", "?", "4"]):  # TRL hands every function the same list
        prompts = [[{"role": "user", "content": "2+2?"}]] * len(batch)
        exact(prompts=prompts, completions=batch, answer=["4"] * len(batch), trainer_state=None)
        form(prompts=prompts, completions=batch, answer=["4"] * len(batch), trainer_state=None)
    assert recorder.fresh
    samples = recorder.samples(2)
    assert not recorder.fresh
    assert samples == [
        {"prompt": "2+2?", "completion": "4", "reward": 1.5, "rewards": {"exact": 1.0, "form": 1.0}},
        {"prompt": "2+2?", "completion": "?", "reward": 0.0, "rewards": {"exact": 0.0, "form": None}},
    ]
    assert len(recorder.samples(10)) == 4  # never more than the batch


def test_a_trusted_reward_file_is_imported_and_called_as_trl_calls_it(tmp_path):
    from tuiwiz.train.rewards import python_reward

    (tmp_path / "helper.py").write_text("BONUS = 0.5\n")
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        from helper import BONUS

        def brevity(prompts, completions, answer=None, **kwargs):
            return [BONUS if len(c) < 5 else 0.0 for c in completions]
    """))
    function = python_reward(PythonReward(file=str(tmp_path / "mine.py"), function="brevity"), 0)
    assert function(prompts=["p", "p"], completions=["hi", "a long reply"], answer=["x", "y"],
                    completion_ids=[[1], [2]], trainer_state=None) == [0.5, 0.0]


# --- refusals before any training -----------------------------------------------------------------------


def grpo_profile(tmp_path, rewards: list[dict], data: str = "demo:arithmetic", **grpo) -> str:
    import yaml

    profile = {"version": 1, "task": "grpo", "model": {"name_or_path": "demo"},
               "data": {"path": data, "max_length": 64},
               "grpo": {"rewards": rewards, "num_generations": 4, **grpo},
               "training": {"max_steps": 1, "per_device_train_batch_size": 8},
               "output": {"runs_dir": "runs", "report_to": []}}
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return str(path)


def completed_run(folder, task: str) -> str:
    """A run folder as a completed run of ``task`` leaves it (state and output/tuiwiz.json), for refusals."""
    run = RunDir(folder)
    (run.output).mkdir(parents=True)
    write_state(run, RunState(run_id=folder.name, status="completed"))
    (run.output / "tuiwiz.json").write_text(json.dumps({"base_model": "demo", "method": "lora", "task": task}))
    return str(folder)


def prompts_file(tmp_path) -> str:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {n} plus one?"}) + "\n" for n in ("one", "two")))
    return path.name


REFUSALS = [
    # (rewards, extra grpo settings, files to write, the file and line named (None: the profile's), field,
    #  message, hint)
    ([{"type": "python", "file": "missing.py", "function": "f"}], {"trust_reward_code": True}, {},
     (None, 11), "grpo.rewards[0].file", "missing.py does not exist", ".py file"),
    ([{"type": "python", "file": "mine.py", "function": "score"}], {"trust_reward_code": True},
     {"mine.py": "def other(prompts, completions, **kwargs):\n    return []\n"},
     (None, 12), "grpo.rewards[0].function", "defines no function score", "its functions: other"),
    ([{"type": "python", "file": "mine.py", "function": "score"}], {"trust_reward_code": True},
     {"mine.py": "def score(prompts, completions):\n    return []\n"},
     (None, 12), "grpo.rewards[0].function", "takes no **kwargs", "def score(prompts, completions, **kwargs)"),
    ([{"type": "python", "file": "mine.py", "function": "score"}], {"trust_reward_code": True},
     {"mine.py": "import os\nos.system('touch ran')\nscore = 1 +\n"},
     ("mine.py", 3), "grpo.rewards[0].file", "is not valid Python", None),
    ([{"type": "python", "file": "mine.py", "function": "score"}], {},
     {"mine.py": "def score(prompts, completions, **kwargs):\n    return []\n"},
     (None, 9), "grpo.rewards", "set grpo.trust_reward_code: true", None),
    ([{"type": "format", "pattern": "x"}, {"type": "reward_model", "path": "sft-run"}], {}, {},
     (None, 13), "grpo.rewards[1].path", "trained with task sft, not reward", "task: reward"),
    ([{"type": "reward_model", "path": "./nowhere"}], {}, {},
     (None, 11), "grpo.rewards[0].path", "no run", None),
    ([{"type": "exact_answer"}], {}, {}, (None, 10), "grpo.rewards[0].type", "questions.jsonl has none",
     "data.columns.answer"),
    ([{"type": "exact_answer"}], {"num_generations": 3}, {},
     (None, None), "training.per_device_train_batch_size", "not a whole number of groups", "multiple of 3"),
]


@pytest.mark.parametrize("rewards,settings,files,place,field,message,hint", REFUSALS)
def test_bad_rewards_are_refused_before_any_run(tmp_path, rewards, settings, files, place, field, message, hint):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    completed_run(tmp_path / "sft-run", "sft")
    data = prompts_file(tmp_path) if "has none" in message else "demo:arithmetic"
    profile = grpo_profile(tmp_path, rewards, data, **settings)
    result = run_cli("--profile", profile, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    error = result.stderr
    named, line = place
    where = str(tmp_path / named) if named else profile
    where += f":{line}" if line else ""
    where += f": {field}: " if field else ": "
    assert f"error: {where}" in error, error
    assert message in error, error
    if hint:
        assert hint in error.split("hint:", 1)[1], error
    assert not (tmp_path / "runs").exists()  # no run dir, not even an empty runs folder
    assert not (tmp_path / "ran").exists()  # the reward file was read, never run


def test_the_reward_file_is_read_not_imported_by_the_check(tmp_path):
    """A trusted file that defines the function passes the preflight's check without its top-level code running."""
    from tuiwiz.profile.io import load_profile
    from tuiwiz.run.reward_checks import check_rewards

    (tmp_path / "mine.py").write_text("open('ran', 'w').close()\n\ndef score(prompts, completions, **kw):\n"
                                      "    return [0.0] * len(completions)\n")
    profile = grpo_profile(tmp_path, [{"type": "python", "file": "mine.py", "function": "score"}],
                           trust_reward_code=True)
    check_rewards(load_profile(profile).profile, profile)
    assert not (tmp_path / "ran").exists()
