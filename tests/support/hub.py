"""Stand-ins for the Hugging Face Hub: a server on 127.0.0.1, and its cache's layout on disk."""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler
from pathlib import Path


class LoopbackServer:
    """An HTTP server on 127.0.0.1 standing in for a remote service (the Hub); a subclass answers in
    ``handle(request, method)``. Use it as a context manager."""

    def __init__(self) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_PUT(self) -> None:
                fake.handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request, method: str) -> None:
        raise NotImplementedError


SHA = "b" * 40


class ModelHub(LoopbackServer):
    """Serves model folders as the Hub does: /api/models/ID (file list, card) and /ID/resolve/REV/FILE (ranges)."""

    def __init__(self, repos: dict[str, Path], license: str | None = "apache-2.0") -> None:
        self.repos = repos
        self.license = license
        self.reads: list[tuple[str, str | None]] = []  # (file, Range header) of every file request
        super().__init__()

    def _send(self, request, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?")[0]
        if path == "/api/agent-harnesses":
            return self._send(request, 200, b'{"standardEnvVars": [], "harnesses": {}}', "application/json")
        if path.startswith("/api/models/"):
            repo_id = path[len("/api/models/"):].split("/revision/")[0]
            folder = self.repos.get(repo_id)
            if folder is None:
                return self._send(request, 404, b'{"error": "Repository not found"}', "application/json",
                                  {"X-Error-Code": "RepoNotFound"})
            siblings = [{"rfilename": f.name, "size": f.stat().st_size}
                        for f in sorted(folder.iterdir()) if f.is_file()]
            card = {"license": self.license} if self.license else {}
            body = {"id": repo_id, "sha": SHA, "private": False, "siblings": siblings, "cardData": card}
            return self._send(request, 200, json.dumps(body).encode(), "application/json")
        repo_id, sep, rest = path.lstrip("/").partition("/resolve/")
        folder = self.repos.get(repo_id)
        name = rest.split("/", 1)[-1] if sep else None
        if folder is None or not name or not (folder / name).is_file():
            return self._send(request, 404, b"not found", "text/plain", {"X-Error-Code": "EntryNotFound"})
        data = (folder / name).read_bytes()
        span = request.headers.get("Range")
        self.reads.append((name, span))
        if span:
            first, _, last = span.removeprefix("bytes=").partition("-")
            end = min(int(last), len(data) - 1)
            part = data[int(first):end + 1]
            return self._send(request, 206, part, "application/octet-stream",
                              {"Content-Range": f"bytes {first}-{end}/{len(data)}"})
        return self._send(request, 200, data, "application/octet-stream")


def online(monkeypatch, tmp_path: Path, hub: ModelHub) -> Path:
    """This process online against the fake Hub, with an empty Hugging Face cache; returns the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache


def fake_hub_cache(root: Path, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40, *,
                   kind: str = "models") -> Path:
    """The layout huggingface_hub writes for a repo (``kind`` models or datasets): blobs, a snapshot of
    symlinks, refs/main. Returns the snapshot folder."""
    repo = root / (f"{kind}--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:040d}"
        blob.write_bytes(data)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    return snapshot


def fake_dataset_cache(root: Path, repo_id: str, files: dict[str, bytes], commit: str = "b" * 40) -> Path:
    """A dataset repo in the Hugging Face cache (see fake_hub_cache)."""
    return fake_hub_cache(root, repo_id, files, commit, kind="datasets")


ROWS = [{"instruction": f"Say {w}", "output": w} for w in ("hi", "bye", "yes", "no")]  # a tiny alpaca dataset


def parquet_bytes(rows: list[dict], tmp_path: Path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path.read_bytes()
