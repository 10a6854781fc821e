"""Preference and KTO data: bad records are refused naming file, line and field (exit 2 from the CLI, no run
left behind); the shapes real datasets come in (HH-RLHF, UltraFeedback) are accepted and normalised; records
become the rows TRL's trainers take; prompts past preference.max_prompt_length are refused."""

import itertools
import json

import pytest

from tuiwiz.data.datasets import load_dataset_file
from tuiwiz.data.preference_prompts import check_prompt_lengths_light, light_token_counter
from tuiwiz.errors import UserError
from tuiwiz.profile.schema import Profile

from .support.processes import run_cli

LONG_PROMPT = "What does the cow eat " * 40 + "?"


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def turns(*pairs) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


GOOD = {"prompt": "What sound does the cow make?", "chosen": "Sure! The cow says moo.", "rejected": "The cow says moo."}

BAD = [
    # (case, content, task, line, field, message fragment)
    ("missing chosen", jsonl(GOOD, {"prompt": "q", "rejected": "b"}), "dpo", 2, "chosen", "lacks chosen"),
    ("missing rejected", jsonl(GOOD, {"prompt": "q", "chosen": "a"}), "dpo", 2, "rejected", "lacks rejected"),
    ("chosen is rejected", jsonl(GOOD, GOOD, {"prompt": "q", "chosen": "same ", "rejected": "same"}), "orpo", 3,
     "rejected", "are the same text"),
    ("empty chosen", jsonl({"prompt": "q", "chosen": "", "rejected": "b"}), "dpo", 1, "chosen", "'chosen' is empty"),
    ("blank rejected", jsonl({"prompt": "q", "chosen": "a", "rejected": "  "}), "simpo", 1, "rejected",
     "'rejected' is empty"),
    ("empty prompt", jsonl({"prompt": "", "chosen": "a", "rejected": "b"}), "dpo", 1, "prompt", "has no prompt"),
    ("conversations differ early", jsonl({
        "chosen": turns(("user", "hi"), ("assistant", "hello"), ("user", "q"), ("assistant", "a")),
        "rejected": turns(("user", "hi"), ("assistant", "HEY"), ("user", "q"), ("assistant", "b"))}), "dpo", 1,
     "rejected", "differ before their last assistant reply"),
    ("conversation ends with the user", jsonl({
        "chosen": turns(("user", "q"), ("assistant", "a"), ("user", "more")),
        "rejected": turns(("user", "q"), ("assistant", "b"), ("user", "more"))}), "dpo", 1, "chosen",
     "should end with the assistant's reply"),
    ("kto label not boolean", jsonl({"prompt": "q", "completion": "a", "label": True},
                                    {"prompt": "q", "completion": "b", "label": "maybe"}), "kto", 2, "label",
     "should be true or false"),
    ("kto label a number", jsonl({"prompt": "q", "completion": "a", "label": 3}), "kto", 1, "label",
     "should be true or false"),
]


@pytest.mark.parametrize("case,content,task,line,field,message", BAD, ids=[case[0] for case in BAD])
def test_bad_preference_records_name_file_line_field(tmp_path, case, content, task, line, field, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        load_dataset_file(path, task=task)
    error = info.value
    assert (error.file, error.line, error.field, error.kind) == (str(path), line, field, "data"), error
    assert message in error.message, error.message


def test_hh_rlhf_and_ultrafeedback_shapes_are_normalised(tmp_path):
    hh = tmp_path / "hh.jsonl"
    hh.write_text(jsonl({"chosen": "\n\nHuman: What sound does the cow make?\n\nAssistant: Sure! Moo.",
                         "rejected": "\n\nHuman: What sound does the cow make?\n\nAssistant: Woof."}))
    data = load_dataset_file(hh, task="dpo")
    assert data.format == "preference"
    assert data.records == [{"prompt": [{"role": "user", "content": "What sound does the cow make?"}],
                             "chosen": "Sure! Moo.", "rejected": "Woof."}]

    # UltraFeedback (binarized): the prompt as text and again as the conversations' first turn
    conversation = turns(("system", "Be brief."), ("user", "What colour is the frog?"))
    uf = tmp_path / "uf.jsonl"
    uf.write_text(jsonl({"prompt": "What colour is the frog?", "score_chosen": 9.0,
                         "chosen": conversation + turns(("assistant", "Green.")),
                         "rejected": conversation + turns(("assistant", "Blue."))}))
    data = load_dataset_file(uf, task="orpo")
    assert data.records == [{"prompt": conversation, "chosen": "Green.", "rejected": "Blue."}]

    # KTO takes pairs too (each splits into a desirable and an undesirable completion: preference_rows.py)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(jsonl(GOOD))
    assert load_dataset_file(pairs, task="kto").format == "preference"
    labelled = tmp_path / "kto.csv"
    labelled.write_text("prompt,completion,label\nq,a,true\nq,b,False\n")
    data = load_dataset_file(labelled, task="kto")
    assert [r["label"] for r in data.records] == [True, False]


@pytest.fixture
def demo_tokenizer(demo_built):
    from transformers import AutoTokenizer

    from tuiwiz.demo.builtin import resolve_builtin

    return AutoTokenizer.from_pretrained(resolve_builtin("demo"))


def profile_for(task: str, **preference) -> Profile:
    return Profile(task=task, data={"max_length": 128}, preference=preference)


def test_rows_follow_the_chat_template_or_are_text_ending_in_eos(tmp_path, demo_tokenizer):
    from tuiwiz.train.preference_rows import preference_rows, unpaired_rows

    path = tmp_path / "d.jsonl"
    conversation = turns(("system", "Be brief."), ("user", "q2"))
    path.write_text(jsonl(GOOD, {"prompt": conversation, "chosen": "a", "rejected": "b"}))
    data = load_dataset_file(path, task="dpo")
    profile = profile_for("dpo")
    rows = preference_rows(data, demo_tokenizer, profile)
    assert rows[0] == {"prompt": turns(("user", GOOD["prompt"])), "chosen": turns(("assistant", GOOD["chosen"])),
                       "rejected": turns(("assistant", GOOD["rejected"]))}
    assert rows[1]["prompt"] == conversation

    unpaired = unpaired_rows(data, demo_tokenizer, profile_for("kto"))
    assert sorted((r["completion"][0]["content"], r["label"]) for r in unpaired) == [
        ("Sure! The cow says moo.", True), ("The cow says moo.", False), ("a", True), ("b", False)]

    demo_tokenizer.chat_template = None  # a base model: text rows, the replies ending in EOS
    with pytest.raises(UserError) as info:
        preference_rows(data, demo_tokenizer, profile)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), 2, "prompt")
    assert "no chat template" in info.value.message
    text_only = load_dataset_file(path, task="dpo", limit=1)
    eos = demo_tokenizer.eos_token
    assert preference_rows(text_only, demo_tokenizer, profile) == [
        {"prompt": GOOD["prompt"], "chosen": GOOD["chosen"] + eos, "rejected": GOOD["rejected"] + eos}]


def test_unpaired_rows_are_shuffled_so_no_batch_pairs_a_prompt_with_itself(tmp_path, demo_tokenizer):
    from tuiwiz.train.preference_rows import unpaired_rows

    path = tmp_path / "d.jsonl"
    path.write_text(jsonl(*({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40))))
    rows = unpaired_rows(load_dataset_file(path, task="kto"), demo_tokenizer, profile_for("kto"))
    prompts = [r["prompt"][0]["content"] for r in rows]
    neighbours_alike = sum(a == b for a, b in itertools.pairwise(prompts))
    assert neighbours_alike <= 5, prompts  # in file order all 40 pairs would sit side by side
    assert rows == unpaired_rows(load_dataset_file(path, task="kto"), demo_tokenizer, profile_for("kto"))  # seeded


def test_long_prompts_are_refused_by_the_runner_and_before_it_with_the_same_count(tmp_path, demo_tokenizer):
    from tuiwiz.data.rendering import ModelText
    from tuiwiz.demo.builtin import resolve_builtin
    from tuiwiz.train.preference_rows import check_prompts, token_counter

    path = tmp_path / "d.jsonl"
    path.write_text(jsonl(GOOD, GOOD, {"prompt": LONG_PROMPT, "chosen": "a", "rejected": "b"}))
    data = load_dataset_file(path, task="dpo")
    light = light_token_counter(ModelText(resolve_builtin("demo")))
    real = token_counter(demo_tokenizer)
    for prompt in (turns(("user", LONG_PROMPT)), turns(("system", "s"), ("user", "q")), "plain text prompt"):
        assert light(prompt) == real(prompt)
    long_tokens = real(turns(("user", LONG_PROMPT)))
    assert 64 < long_tokens < 1000

    for check in (lambda p: check_prompts(p, demo_tokenizer, data),
                  lambda p: check_prompt_lengths_light(p, data, resolve_builtin("demo"))):
        with pytest.raises(UserError) as info:
            check(profile_for("dpo"))  # unset: half of data.max_length=128
        error = info.value
        assert (error.file, error.line, error.field) == (str(path), 3, "prompt")
        assert f"{long_tokens} tokens" in error.message and "max_prompt_length=64" in error.message
        assert "preference.max_prompt_length" in error.hint
        check(Profile(task="dpo", data={"max_length": 2048}, preference={"max_prompt_length": long_tokens}))


def test_settings_trl_would_refuse_late_are_refused_when_the_profile_is_read():
    from tuiwiz.profile.io import parse_profile_text

    cases = [
        ("task: kto\ntraining:\n  per_device_train_batch_size: 1\n", "training.per_device_train_batch_size"),
        ("task: dpo\npreference:\n  loss_type: exo_pair\n", "preference.label_smoothing"),
        ("task: dpo\ndata:\n  max_length: 64\npreference:\n  max_prompt_length: 64\n",
         "preference.max_prompt_length"),
    ]
    for text, field in cases:
        with pytest.raises(UserError) as info:
            parse_profile_text(text, "p.yaml")
        assert info.value.field == field, info.value
        assert info.value.line is not None and info.value.kind == "profile"
    # a section the task would ignore is a mistake said at its line, not a setting silently dropped
    for text, field, line in [("task: sft\npreference:\n  beta: 0.5\n", "preference.beta", 3),
                              ("grpo:\n  temperature: 0.7\n  rewards: [{type: exact_answer}]\n", "grpo.rewards", 3),
                              ("task: dpo\ngrpo:\n  num_generations: 8\n", "grpo.num_generations", 3)]:
        with pytest.raises(UserError) as info:
            parse_profile_text(text, "p.yaml")
        assert (info.value.field, info.value.line) == (field, line), info.value
        assert "remove the" in info.value.message and "task" in info.value.message
    # KTO's unpaired APO loss has no KL term, so one example a micro-batch is enough
    Profile(task="kto", preference={"loss_type": "apo_zero_unpaired"}, training={"per_device_train_batch_size": 1})


CLI_CASES = [
    # (content, task, line, field)
    (jsonl(GOOD, {"prompt": "q", "rejected": "b"}), "dpo", 2, "chosen"),
    (jsonl(GOOD, {"prompt": "q", "chosen": "same", "rejected": "same"}), "orpo", 2, "rejected"),
    (jsonl({"prompt": "q", "completion": "a", "label": "perhaps"}), "kto", 1, "label"),
    (jsonl(GOOD, GOOD, GOOD, {"prompt": LONG_PROMPT, "chosen": "a", "rejected": "b"}), "dpo", 4, "prompt"),
]


@pytest.mark.slow  # the real CLI, a fresh interpreter a case
@pytest.mark.parametrize("content,task,line,field", CLI_CASES,
                         ids=["missing chosen", "chosen is rejected", "kto label", "prompt too long"])
def test_cli_refuses_bad_preference_data_with_exit_2_and_no_run(tmp_path, demo_built, content, task, line, field):
    (tmp_path / "d.jsonl").write_text(content)
    profile = tmp_path / "p.yaml"
    profile.write_text(f"task: {task}\ndata:\n  path: d.jsonl\n  max_length: 128\ntraining:\n  max_steps: 2\n"
                       "output:\n  runs_dir: runs\n")
    result = run_cli("--profile", profile, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"d.jsonl:{line}: {field}: " in result.stderr, result.stderr
    assert "hint: " in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_switching_task_leaves_no_section_the_new_task_would_ignore():
    from tuiwiz.plan.recommend import with_task
    from tuiwiz.profile.io import dump_profile, parse_profile_text

    grpo = Profile(task="grpo", grpo={"rewards": [{"type": "exact_answer"}], "num_generations": 8},
                   training={"per_device_train_batch_size": 8})
    dpo = Profile(task="dpo", preference={"beta": 0.5})
    for base, task in [(grpo, "sft"), (grpo, "dpo"), (dpo, "sft"), (dpo, "grpo")]:
        switched = with_task(base, task)
        again = parse_profile_text(dump_profile(switched), "p.yaml")  # the schema accepts it as it is
        assert again.task == task
        assert again == Profile.model_validate(switched.model_dump())
