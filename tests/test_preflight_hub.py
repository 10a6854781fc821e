"""A hub model or dataset id is checked before a run dir exists: in the cache, or asked of the Hub.

A misspelt id, an id offline that is not cached, or a relative folder written without ./ used to
create a run that failed in the runner (exit 1); now each is a UserError naming the field (exit 2).
The Hub here is a fake on 127.0.0.1, reached through HF_ENDPOINT by the real huggingface_hub client.
"""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tuiwiz.errors import UserError

from .support.hub import ROWS, LoopbackServer, fake_dataset_cache, fake_hub_cache, parquet_bytes
from .support.processes import run_cli


class FakeHub(LoopbackServer):
    """Answers model_info / dataset_info: 200 for the repos it holds, the Hub's 404 (RepoNotFound) otherwise."""

    def __init__(self, models: dict[str, dict] | None = None, datasets: dict[str, dict] | None = None) -> None:
        self.repos = {"models": models or {}, "datasets": datasets or {}}
        self.asked: list[str] = []
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?")[0]
        status, payload, headers = 404, {"error": "Not found"}, {}
        if path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry
            status, payload = 200, {"standardEnvVars": [], "harnesses": {}}
        elif path.startswith(("/api/models/", "/api/datasets/")):
            kind, rest = path[len("/api/"):].split("/", 1)
            repo_id = rest.split("/revision/")[0]
            self.asked.append(f"{kind}/{repo_id}")
            if repo_id in self.repos[kind]:
                status, payload = 200, {"id": repo_id, "sha": "a" * 40, "private": False, **self.repos[kind][repo_id]}
            else:
                payload, headers = {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)


def _profile(tmp_path: Path, model: str = "demo", data: str = "demo:alpaca") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"model:\n  name_or_path: {model}\ndata:\n  path: {data}\ntraining:\n  max_steps: 2\n"
                    "output:\n  runs_dir: runs\n")
    return path


def _online(tmp_path: Path, monkeypatch, endpoint: str) -> dict:
    """A child's environment online against ``endpoint``, with an empty cache and no token."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    home = tmp_path / "hf"
    return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def _refused(tmp_path: Path, profile: Path, env: dict | None, *fragments: str) -> str:
    result = run_cli("--profile", profile, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    return result.stderr


OFFLINE_CASES = [
    # (model, data, what the error names)
    ("someone/not-downloaded", "demo:alpaca",
     ["model.name_or_path: model someone/not-downloaded is not in the Hugging Face cache, and HF_HUB_OFFLINE is set",
      "hf download someone/not-downloaded", "unset HF_HUB_OFFLINE"]),
    ("demo", "acme/not-cached",
     ["data.path: dataset acme/not-cached is not in the Hugging Face cache, and HF_HUB_OFFLINE is set",
      "hf download acme/not-cached --repo-type dataset"]),
    # a local folder written without ./ that does not exist reads as a hub id: the hint says so
    ("my-model", "demo:alpaca", ["model.name_or_path: model my-model is not in the Hugging Face cache",
                                 "for a local folder write ./my-model"]),
    # neither an existing folder nor a valid id: no hub error at all
    ("models/llama/v2", "demo:alpaca", ["model.name_or_path: no such folder: models/llama/v2 (read relative to",
                                        "not a Hugging Face model id"]),
    ("demo", "'my data'", ["data.path: no such file or folder: my data", "not a Hugging Face dataset id"]),
]


@pytest.mark.parametrize("model,data,fragments", OFFLINE_CASES, ids=["model", "dataset", "bare-folder",
                                                                      "deep-folder", "bad-data-name"])
def test_offline_an_uncached_hub_id_is_refused_before_a_run_exists(tmp_path, model, data, fragments):
    _refused(tmp_path, _profile(tmp_path, model, data), {"HF_HUB_CACHE": str(tmp_path / "empty-cache")}, *fragments)


def test_an_id_missing_on_the_hub_is_refused(tmp_path, monkeypatch):
    with FakeHub(models={"acme/real-model": {}}, datasets={"acme/real-data": {}}) as hub:
        env = _online(tmp_path, monkeypatch, hub.url)
        _refused(tmp_path, _profile(tmp_path, model="acme/misspelt-model"), env,
                 f"model.name_or_path: no model acme/misspelt-model on the Hugging Face Hub ({hub.url})",
                 "check the spelling", "HF_TOKEN")
        _refused(tmp_path, _profile(tmp_path, data="acme/misspelt-data:train"), env,
                 "data.path: no dataset acme/misspelt-data on the Hugging Face Hub")
        # a gated repository without a token: the runner could not download it either
        hub.repos["models"]["acme/gated"] = {"gated": "manual"}
        _refused(tmp_path, _profile(tmp_path, model="acme/gated"), env,
                 "model.name_or_path: model acme/gated is gated on the Hugging Face Hub", "set HF_TOKEN")
    assert hub.asked == ["models/acme/misspelt-model", "datasets/acme/misspelt-data", "models/acme/gated"]


def test_an_unreachable_hub_is_refused(tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port that nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _online(tmp_path, monkeypatch, f"http://127.0.0.1:{port}")
    _refused(tmp_path, _profile(tmp_path, model="acme/any-model"), env,
             f"model.name_or_path: the Hugging Face Hub (http://127.0.0.1:{port}) could not be reached",
             "the runner could not download it either", "check the network or HF_ENDPOINT")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding one dataset, as test_hub_data fakes it, seen by this process."""
    cache = tmp_path / "hub"
    fake_dataset_cache(cache, "acme/tiny-alpaca", {"data/train-00000-of-00001.parquet": parquet_bytes(ROWS, tmp_path)})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _preflight(tmp_path: Path, **ids) -> None:
    from tuiwiz.profile.io import load_profile
    from tuiwiz.run.preflight import preflight

    preflight(load_profile(_profile(tmp_path, **ids)))


def test_a_cached_dataset_passes_offline(hub_cache, tmp_path):
    _preflight(tmp_path, data="acme/tiny-alpaca")
    # the same check refuses what the cache lacks: a split it has no files for, another id
    with pytest.raises(UserError, match=r"acme/tiny-alpaca \(split test\) is not in the Hugging Face cache"):
        _preflight(tmp_path, data="acme/tiny-alpaca:test")
    with pytest.raises(UserError, match="acme/other is not in the Hugging Face cache") as info:
        _preflight(tmp_path, data="acme/other")
    assert info.value.field == "data.path" and info.value.kind == "data"
    assert not (tmp_path / "runs").exists()


def test_online_the_cache_is_read_first_and_the_hub_asked_once(hub_cache, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with FakeHub(models={"acme/real-model": {}}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        _preflight(tmp_path, model="acme/real-model", data="acme/tiny-alpaca")
        with pytest.raises(UserError, match="no model acme/typo-model on the Hugging Face Hub") as info:
            _preflight(tmp_path, model="acme/typo-model")
    assert info.value.field == "model.name_or_path"
    assert hub.asked == ["models/acme/real-model", "models/acme/typo-model"]  # never the cached dataset


def test_a_cached_hub_model_gets_the_disk_check_before_a_run_exists(tmp_path, monkeypatch):
    """A hub id found in the cache is checked like a local folder: too little disk is refused up front."""
    import shutil
    from collections import namedtuple

    from huggingface_hub import constants

    from tuiwiz.demo.build import ensure_demo_model
    from tuiwiz.profile.io import load_profile
    from tuiwiz.run.launch import create_run

    demo = ensure_demo_model()
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "acme/tiny-llama", {f.name: f.read_bytes() for f in demo.iterdir()
                                              if f.is_file() and not f.name.startswith(".")})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    profile = _profile(tmp_path, model="acme/tiny-llama")
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 2**20, 2**20))  # 1 MiB free
    with pytest.raises(UserError) as info:
        create_run(load_profile(profile))
    assert info.value.message.startswith("the run needs ") and info.value.message.endswith("; 0.0 GB is free")
    assert info.value.hint.startswith("free space, lower training.save_total_limit")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
