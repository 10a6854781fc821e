"""A hub dataset already in the Hugging Face cache is previewed from its files, without `datasets`."""

from __future__ import annotations

import pytest

from tuiwiz.data.datasets import cached_hub_dataset_files

from .support.hub import ROWS, fake_dataset_cache, parquet_bytes


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    fake_dataset_cache(cache, "acme/tiny-alpaca", {
        "README.md": b"# tiny\n",
        "data/train-00000-of-00001.parquet": parquet_bytes(ROWS, tmp_path),
        "data/test-00000-of-00001.parquet": parquet_bytes(ROWS[:1], tmp_path),
    })
    fake_dataset_cache(cache, "acme/plain", {"all.jsonl": b'{"text": "one"}\n{"text": "two"}\n'})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # for child processes
    import huggingface_hub.constants

    # huggingface_hub reads the variable when first imported: in a process that has imported it, this
    # is where its functions look
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_cached_files_by_split(hub_cache):
    train = cached_hub_dataset_files("acme/tiny-alpaca", cache_dir=hub_cache)
    assert [p.name for p in train] == ["train-00000-of-00001.parquet"]
    assert [p.name for p in cached_hub_dataset_files("acme/tiny-alpaca", "test", cache_dir=hub_cache)] == \
        ["test-00000-of-00001.parquet"]
    assert cached_hub_dataset_files("acme/tiny-alpaca", "validation", cache_dir=hub_cache) == []
    # files that name no split are the train split, as datasets reads them
    assert [p.name for p in cached_hub_dataset_files("acme/plain", cache_dir=hub_cache)] == ["all.jsonl"]
    assert cached_hub_dataset_files("acme/not-cached", cache_dir=hub_cache) == []


def test_the_wizard_previews_a_cached_hub_dataset(hub_cache, tmp_path):
    from tuiwiz.ui.choices import WizardState, check_data

    state = WizardState(workdir=tmp_path)
    state.data_path = "acme/tiny-alpaca"
    check = check_data(state)
    assert check.error is None and check.data is not None
    assert len(check.data) == 4 and check.data.format == "alpaca"
    assert "cached train-00000-of-00001.parquet" in check.note
    state.data_path = "acme/tiny-alpaca:test"
    assert len(check_data(state).data) == 1
    state.data_path = "acme/not-cached"
    missing = check_data(state)
    assert missing.data is None and missing.error is None and "not in the Hugging Face cache" in missing.note


def test_the_runner_reads_the_cached_files_offline(hub_cache, monkeypatch, tmp_path):
    """datasets offline reloads only what it prepared itself; the runner falls back to the files."""
    import datasets.config
    import huggingface_hub.constants

    from tuiwiz.data.datasets import load_hub_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    # both read HF_HUB_OFFLINE once, at import: imported by a test that was online, they would try the network
    # (70 s of retries without one)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    train = load_hub_dataset("acme/tiny-alpaca")
    assert len(train) == 4 and train.format == "alpaca"
    assert len(load_hub_dataset("acme/tiny-alpaca", split="test")) == 1
    with pytest.raises(Exception, match="cannot load the hub dataset 'acme/not-cached'"):
        load_hub_dataset("acme/not-cached")


@pytest.mark.slow
def test_a_run_trains_on_a_cached_hub_dataset_offline(hub_cache, tmp_path):
    from tuiwiz.run.events import read_events

    from .support.processes import run_cli
    from .support.runs import only_run, write_profile

    profile = write_profile(tmp_path, "quickstart.yaml", data__path="acme/tiny-alpaca", training__max_steps=2,
                            training__logging_steps=1)
    result = run_cli("--profile", profile, env={"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1",
                                                "HF_DATASETS_CACHE": str(tmp_path / "datasets")})
    run = only_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + run.log.read_text()
    start = next(e for e in read_events(run.events) if e["type"] == "run_start")
    assert start["train_examples"] == 4
