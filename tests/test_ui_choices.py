"""The wizard's choices to a profile: the form's parsing and the schema's own messages, names, paths."""

from __future__ import annotations

import pytest

from tuiwiz.errors import UserError
from tuiwiz.profile.schema import Profile
from tuiwiz.ui.choices import (
    WizardState,
    check_profile_name,
    form_fields,
    form_values,
    headless_command,
    is_hub_dataset,
    profile_from_form,
)


def test_form_entries_are_read_as_yaml_would():
    profile = profile_from_form(Profile(), {"training.learning_rate": "2e-4", "training.max_steps": "30",
                                            "training.gradient_checkpointing": True, "training.eval_steps": ""})
    assert profile.training.learning_rate == 2e-4 and profile.training.max_steps == 30
    assert profile.training.gradient_checkpointing is True and profile.training.eval_steps is None


@pytest.mark.parametrize("key, value, message", [
    ("training.learning_rate", "fast", "valid number"),
    ("training.learning_rate", "2", "less than 1"),
    ("training.per_device_train_batch_size", "0", "greater than or equal to 1"),
    ("training.lr_scheduler_type", "sometimes", "'linear'"),
    ("method.r", "0", "greater than or equal to 1"),
])
def test_form_errors_are_the_schemas_and_name_the_field(key, value, message):
    with pytest.raises(UserError) as caught:
        profile_from_form(Profile(), {key: value})
    assert caught.value.field == key
    assert message in caught.value.message


def test_form_covers_the_methods_own_fields():
    keys = {f.key for f in form_fields(Profile())}
    assert {"method.r", "method.lora_alpha", "method.use_dora", "training.optim", "data.packing"} <= keys
    values = form_values(Profile(), form_fields(Profile()))
    assert values["method.r"] == "16" and values["data.packing"] is False


def test_profile_names_and_commands(tmp_path):
    assert check_profile_name("demo-lora") is None
    assert check_profile_name("bad name!") and check_profile_name("") and check_profile_name("-x")
    assert headless_command(WizardState(workdir=tmp_path), "demo-lora") == "tuiwiz --profile profiles/demo-lora.yaml"


def test_hub_dataset_ids():
    assert is_hub_dataset("tatsu-lab/alpaca") and is_hub_dataset("org/name:train")
    assert not is_hub_dataset("demo:alpaca") and not is_hub_dataset("data/train.jsonl")
    assert not is_hub_dataset("./train.csv")
