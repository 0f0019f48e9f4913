"""A Hugging Face Hub endpoint on localhost, serving local folders as model repositories.

So that ``huggingface_hub``'s own download code (``snapshot_download``, ``hf_hub_download``)
writes the cache, as it does for real downloads, while the tests never reach the network.
Only the calls a download makes are answered: the repo's revision info, its file tree, and
``resolve`` (HEAD and GET) for each file, with the headers the Hub sends (``X-Repo-Commit``,
``ETag``/``X-Linked-Etag`` of a git blob or LFS sha256, sizes).
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

LFS_MIN_BYTES = 1024
"""Files at least this large are served as LFS files (their ETag is the content's sha256), as
the Hub does for weights; smaller ones as git blobs (ETag: the git blob id)."""


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id, not a security hash


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]
    branches: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, folder: Path, commit: str) -> Repo:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return cls(commit, files, {"main": commit})

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if len(data) >= LFS_MIN_BYTES else git_blob_id(data)

    def tree_entry(self, path: str) -> dict[str, object]:
        data = self.files[path]
        entry: dict[str, object] = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
        if len(data) >= LFS_MIN_BYTES:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


class _Handler(BaseHTTPRequestHandler):
    repos: ClassVar[dict[str, Repo]] = {}

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, value: object) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _repo(self, repo_id: str) -> Repo | None:
        return self.repos.get(repo_id)

    def _commit(self, repo: Repo, revision: str) -> str | None:
        return revision if revision == repo.commit else repo.branches.get(revision)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, action, revision = "/".join(parts[2:4]), parts[4], parts[5]
            repo = self._repo(repo_id)
            commit = self._commit(repo, revision) if repo else None
            if repo is None or commit is None:
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            if action == "revision":
                return self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                   "siblings": [{"rfilename": p} for p in repo.files]})
            if action == "tree":
                return self._json([repo.tree_entry(p) for p in repo.files])
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = self._repo(repo_id)
            commit = self._commit(repo, revision) if repo else None
            if repo is None or commit is None or filename not in repo.files:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
            data = repo.files[filename]
            etag = repo.etag(filename)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Content-Length": str(len(data)),
                       "Content-Type": "application/octet-stream"}
            if len(data) >= LFS_MIN_BYTES:
                headers["X-Linked-Etag"] = f'"{etag}"'
                headers["X-Linked-Size"] = str(len(data))
            return self._send(200, data, headers, head=head)
        return self._send(404)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)


@contextmanager
def hub_endpoint(repos: dict[str, Repo]) -> Iterator[str]:
    """Serve ``repos`` on localhost for the duration; yields the endpoint URL."""
    handler = type("Handler", (_Handler,), {"repos": repos})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
