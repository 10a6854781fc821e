"""export --format hub through the real huggingface_hub client, against a fake Hub on 127.0.0.1.

The fake answers what create_repo and upload_folder ask for small files: create, README metadata
validation, preupload (safetensors go as LFS), the LFS batch API with a storage URL of its own,
the PUT there, LFS verify, and the ndjson commit. huggingface_hub uploads through Xet storage when
hf_xet is installed (a Rust client speaking to a content-addressed store): that protocol is not
faked, so these tests set HF_HUB_DISABLE_XET and exercise the LFS path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tuiwiz.errors import UserError

from .support.hub import LoopbackServer
from .support.processes import run_cli

REPO = "someone/tiny-lora"
TOKEN = "hf_tuiwizTestToken0123456789abcdef"


class FakeHub(LoopbackServer):
    """A Hub that keeps what it is sent: requests (method, path, lower-cased headers), LFS objects, files."""

    def __init__(self, *, create_status: int = 200, storage_status: int = 200) -> None:
        self.create_status = create_status
        self.storage_status = storage_status
        self.requests: list[tuple[str, str, dict]] = []
        self.lfs: dict[str, bytes] = {}
        self.files: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.created: list[dict] = []
        self.unexpected: list[tuple[str, str]] = []
        super().__init__()

    @staticmethod
    def body(request: BaseHTTPRequestHandler) -> bytes:
        if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(request.rfile.readline().split(b";")[0], 16):
                data += request.rfile.read(size)
                request.rfile.readline()
            request.rfile.readline()
            return data
        return request.rfile.read(int(request.headers.get("Content-Length") or 0))

    @staticmethod
    def reply(request: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?")[0]
        body = self.body(request) if method != "GET" else b""
        self.requests.append((method, path, {k.lower(): v for k, v in request.headers.items()}))
        models = f"/api/models/{REPO}"
        if (method, path) == ("POST", "/api/repos/create"):
            payload = json.loads(body)
            if self.create_status != 200:
                return self.reply(request, self.create_status, {"error": "no write access to this namespace"},
                                  {"X-Error-Message": "no write access to this namespace"})
            self.created.append(payload)
            return self.reply(request, 200, {"url": f"{self.url}/{REPO}"})
        if (method, path) == ("GET", models):  # repo_info, asked after a refused create
            return self.reply(request, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if (method, path) == ("GET", "/api/agent-harnesses"):  # huggingface_hub's user-agent registry
            return self.reply(request, 200, {"standardEnvVars": [], "harnesses": {}})
        if (method, path) == ("POST", "/api/validate-yaml"):
            return self.reply(request, 200, {"errors": [], "warnings": []})
        if (method, path) == ("POST", f"{models}/preupload/main"):
            files = json.loads(body)["files"]
            return self.reply(request, 200, {"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                 "shouldIgnore": False} for f in files]})
        if (method, path) == ("POST", f"/{REPO}.git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            return self.reply(request, 200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "actions": {
                    "upload": {"href": f"{self.url}/storage/{o['oid']}"},
                    "verify": {"href": f"{self.url}/{REPO}.git/info/lfs/objects/verify"}}} for o in objects]})
        if method == "PUT" and path.startswith("/storage/"):
            oid = path.rsplit("/", 1)[1]
            if self.storage_status != 200:
                return self.reply(request, self.storage_status, {"error": "storage refused the object"})
            if hashlib.sha256(body).hexdigest() != oid:
                return self.reply(request, 400, {"error": "sha256 mismatch"})
            self.lfs[oid] = body
            return self.reply(request, 200, {})
        if (method, path) == ("POST", f"/{REPO}.git/info/lfs/objects/verify"):
            check = json.loads(body)
            ok = len(self.lfs.get(check["oid"], b"")) == check["size"]
            return self.reply(request, 200 if ok else 404, {})
        if (method, path) == ("POST", f"{models}/commit/main"):
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            assert lines[0]["key"] == "header"
            self.commits.append(lines[0]["value"])
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    self.files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "lfsFile":
                    self.files[value["path"]] = self.lfs[value["oid"]]
            return self.reply(request, 200, {"commitUrl": f"{self.url}/{REPO}/commit/{'a' * 40}",
                                             "commitOid": "a" * 40, "success": True})
        self.unexpected.append((method, path))
        return self.reply(request, 404, {"error": f"the fake Hub has no {method} {path}"})


@pytest.fixture(scope="module")
def lora_run(trained_run):
    return trained_run("lora")


@pytest.fixture
def hub_client(monkeypatch):
    """In-process pushes: huggingface_hub read HF_HUB_OFFLINE (set by conftest) and HF_HUB_DISABLE_XET at import."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # its agent registry would be fetched from constants.ENDPOINT, the real Hub: answer from memory
    monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_push_sends_the_adapter_and_its_card_with_the_token_only_in_the_header(lora_run, tmp_path):
    hf_home = tmp_path / "hf"
    with FakeHub() as hub:
        result = run_cli("export", lora_run.path, "--format", "hub", "--repo", REPO, "--private",
                         env={"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(hf_home),
                              "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{hub.url}/{REPO}" in result.stdout + result.stderr

    output = lora_run.path / "output"
    assert hub.files["adapter_model.safetensors"] == (output / "adapter_model.safetensors").read_bytes()
    assert hub.files["adapter_config.json"] == (output / "adapter_config.json").read_bytes()
    assert list(hub.lfs.values()) == [hub.files["adapter_model.safetensors"]]  # sent through LFS storage
    card = hub.files["README.md"].decode()
    assert "library_name: peft" in card and "**lora**" in card and f"# {lora_run.run_id}" in card
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(hub.files)
    assert hub.commits == [{"summary": f"tuiwiz: {lora_run.run_id}", "description": ""}]
    [created] = hub.created
    assert (created["organization"], created["name"]) == tuple(REPO.split("/"))
    assert created.get("visibility") == "private" or created.get("private") is True  # newer and older clients

    assert not any(TOKEN.encode() in content for content in hub.files.values())
    for method, path, headers in hub.requests:
        if path.startswith(("/api/repos/", f"/api/models/{REPO}/", "/api/validate-yaml", f"/{REPO}.git/")):
            assert headers.get("authorization") == f"Bearer {TOKEN}", (method, path)
        else:  # the storage URL (another party's), the client's own registry fetch: no token goes there
            assert TOKEN not in json.dumps(headers), (method, path)
    oid = hashlib.sha256(hub.files["adapter_model.safetensors"]).hexdigest()
    assert [r[:2] for r in hub.requests if r[1] != "/api/agent-harnesses"] == [
        ("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"), ("POST", "/api/validate-yaml"),
        ("POST", f"/api/models/{REPO}/preupload/main"), ("POST", f"/{REPO}.git/info/lfs/objects/batch"),
        ("PUT", f"/storage/{oid}"), ("POST", f"/{REPO}.git/info/lfs/objects/verify"),
        ("POST", f"/api/models/{REPO}/commit/main")]
    assert hub.unexpected == []
    assert TOKEN not in result.stdout + result.stderr
    for place in (tmp_path, lora_run.path, Path(os.environ["TUIWIZ_STATE_DIR"])):  # HF_HOME is in tmp_path
        assert files_holding(place, TOKEN) == []


@pytest.mark.slow
def test_a_refused_push_names_the_repository(lora_run, monkeypatch, hub_client):
    from tuiwiz.post.export import export_run

    with FakeHub(create_status=403) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # read when the push starts, not when huggingface_hub loaded
        with pytest.raises(UserError) as info:
            export_run(str(lora_run.path), "hub", repo=REPO, token=TOKEN)
    message = str(info.value)
    assert f"pushing to {REPO} failed" in message and "403" in message and "/api/repos/create" in message
    assert info.value.kind == "network" and "token may write" in info.value.hint
    assert TOKEN not in message
    assert [r[:2] for r in hub.requests] == [("POST", "/api/repos/create"), ("GET", f"/api/models/{REPO}")]
    assert hub.files == {}


@pytest.mark.slow
def test_a_failed_lfs_upload_is_a_user_error_and_nothing_is_committed(lora_run, monkeypatch, hub_client):
    from tuiwiz.post.export import export_run

    with FakeHub(storage_status=403) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(UserError, match=f"pushing to {REPO} failed") as info:
            export_run(str(lora_run.path), "hub", repo=REPO, token=TOKEN)
    assert "403" in str(info.value) and "/storage/" in str(info.value)
    assert hub.commits == [] and hub.files == {}


@pytest.mark.slow
def test_an_unreachable_hub_is_a_user_error(lora_run, monkeypatch, hub_client):
    from tuiwiz.post.export import export_run

    with FakeHub() as hub:
        url = hub.url
    monkeypatch.setenv("HF_ENDPOINT", url)  # nothing listens there any more
    with pytest.raises(UserError, match=f"pushing to {REPO} failed"):
        export_run(str(lora_run.path), "hub", repo=REPO, token=TOKEN)
