"""A tiny Hugging Face Hub on a loopback port, with just the endpoints that
``huggingface_hub``'s ``snapshot_download``, ``hf_hub_download`` and ``list_repo_files``
call: the revision info, the file tree, and each file's resolve URL (HEAD and GET, with
the X-Repo-Commit, ETag and Content-Length headers the client reads)."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    sha: str = "0" * 39 + "1"
    token: str | None = None  # set: gated, only this bearer token may read it


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)  # "METHOD path", in arrival order
    url: str = ""

    def add_folder(self, repo_id: str, folder: Path, **kwargs: object) -> FakeRepo:
        files = {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }
        repo = FakeRepo(files, **kwargs)  # type: ignore[arg-type]
        self.repos[repo_id] = repo
        return repo

    def downloads(self) -> list[str]:
        """The files fetched (GET of a resolve URL), as repo paths."""
        return [r.split("/resolve/", 1)[1].split("/", 1)[1] for r in self.requests
                if r.startswith("GET ") and "/resolve/" in r]  # fmt: skip


def start_fake_hub(hub: FakeHub) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(f"{self.command} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, kind = "/".join(parts[2:4]), parts[4]
            repo = self._readable(repo_id)
            if repo is None:
                return
            if kind == "revision" and parts[5] not in ("main", repo.sha):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {parts[5]}", body)
            if kind == "revision":
                info = {"id": repo_id, "sha": repo.sha,
                        "siblings": [{"rfilename": name} for name in repo.files]}  # fmt: skip
                return self._json(info, body)
            if kind == "tree":
                tree = [{"type": "file", "path": name, "size": len(data),
                         "oid": hashlib.sha1(data).hexdigest()}
                        for name, data in repo.files.items()]  # fmt: skip
                return self._json(tree, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self._readable("/".join(parts[:2]))
            if repo is None:
                return
            name = "/".join(parts[4:])
            if name not in repo.files:
                return self._error(404, "EntryNotFound", f"{name} does not exist", body)
            data = repo.files[name]
            self.send_response(200)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)
            return
        self._error(404, "RepoNotFound", "no such route", body)

    def _readable(self, repo_id: str) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository Not Found", True)
            return None
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "GatedRepo", "Access to this model is restricted.", True)
            return None
        return repo

    def _json(self, value: object, body: bool) -> None:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, body: bool) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(data)
