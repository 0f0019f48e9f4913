"""Models in the local Hugging Face cache, named by repo id: ``hf:ORG/NAME[@REVISION][/PATH]``.

The cache is the layout ``huggingface_hub`` writes (docs/locators.md):
``<cache>/models--ORG--NAME/refs/<branch or tag>`` holds a commit hash,
``snapshots/<commit>/`` holds the repository's files as relative symlinks into ``blobs/``.
Resolution is offline and reads only that layout; nothing here touches the network except
:func:`fetch_repo`, which ``--download`` calls (``huggingface_hub.snapshot_download`` /
``hf_hub_download``, the library's own writer of this layout).

The cache is an input like any other: a ref is read bounded and must be a 40-hex commit, and
every file of the snapshot must resolve, symlinks followed, inside the repository's folder
(a ref or link pointing elsewhere is one clean error naming the file).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from provenance.errors import LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats.files import read_capped
from provenance.formats.locators import inside

#: a ref file holds one 40-hex commit hash; anything longer is not a ref
MAX_REF_BYTES = 256
#: files a snapshot may hold before the containment walk gives up (real repos: tens to a few thousand)
MAX_SNAPSHOT_ENTRIES = 100_000
MAX_SNAPSHOT_DEPTH = 16
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PATH_PART = re.compile(r"[^\x00/\\]{1,255}")


@dataclass(frozen=True)
class HubName:
    """A parsed ``hf:`` locator."""

    repo_id: str
    revision: str | None = None
    """Branch, tag or commit; None means ``main``."""
    filename: str | None = None
    """A file inside the repository (``/`` separated), or None for the whole snapshot."""

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf:{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")


def hub_cache_dir() -> str:
    """The cache ``huggingface_hub`` uses (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``), as the library computed it."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_repo_id(text: str) -> bool:
    """Whether ``text`` is a valid Hub repo id (``NAME`` or ``ORG/NAME``), by the library's own rules."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def parse_hub_name(locator: str, text: str) -> HubName:
    """``ORG/NAME[@REVISION][/PATH]`` (or ``NAME`` alone) -> :class:`HubName`; raises
    :class:`UnsupportedCheckpoint` naming the part that is not valid."""
    parts = text.split("/")
    # ORG/NAME[@REV]/PATH..., or NAME[@REV] alone (legacy repos without an organisation)
    head, rest = (parts[:2], parts[2:]) if len(parts) >= 2 else (parts, [])
    repo_id = "/".join(head)
    revision = None
    if "@" in repo_id:
        repo_id, revision = repo_id.split("@", 1)
        if not _REVISION.fullmatch(revision):
            raise UnsupportedCheckpoint(locator, f"revision {revision!r} is not a branch, tag or commit name", field="revision")
    if not is_repo_id(repo_id):
        raise UnsupportedCheckpoint(locator, f"{repo_id!r} is not a Hugging Face repo id (ORG/NAME)", field="repo id")
    if any(p in ("", ".", "..") or not _PATH_PART.fullmatch(p) for p in rest):
        raise UnsupportedCheckpoint(locator, "the file path inside the repository is not a plain relative path", field="path")
    return HubName(repo_id, revision, "/".join(rest) or None)


def _read_ref(ref_path: str, revision: str) -> str:
    """The commit hash a branch or tag points to (bounded; must be 40 hex digits)."""
    field = f"refs/{revision}"
    try:
        data = read_capped(ref_path, field, MAX_REF_BYTES)
    except OSError as exc:
        raise MalformedCheckpoint(ref_path, f"cannot read the ref: {exc.strerror}", field=field) from None
    text = data.decode("ascii", "replace").strip()
    if not _COMMIT.fullmatch(text):
        raise MalformedCheckpoint(ref_path, f"the ref does not hold a 40-hex commit hash: {text[:60]!r}", field=field,
                                  offset=0)
    return text


def _check_snapshot(snapshot: str, repo_root: str) -> None:
    """Every entry of the snapshot resolves inside the repository's cache folder (bounded walk)."""
    seen = 0
    stack = [(snapshot, 0)]
    while stack:
        folder, depth = stack.pop()
        if depth > MAX_SNAPSHOT_DEPTH:
            raise LimitExceeded(folder, f"snapshot nested deeper than {MAX_SNAPSHOT_DEPTH} folders", field="snapshot")
        with os.scandir(folder) as entries:
            for entry in entries:
                seen += 1
                if seen > MAX_SNAPSHOT_ENTRIES:
                    raise LimitExceeded(snapshot, f"snapshot holds over {MAX_SNAPSHOT_ENTRIES} entries", field="snapshot")
                real = os.path.realpath(entry.path)
                if not inside(real, repo_root):
                    raise MalformedCheckpoint(entry.path, f"cache entry points outside the repository's cache folder "
                                                          f"(to {real})", field="snapshot link")
                if not os.path.exists(real):
                    raise MalformedCheckpoint(entry.path, "dangling link in the cache snapshot (an incomplete or "
                                                          "damaged download)", field="snapshot link")
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, depth + 1))


def resolve_hub_name(locator: str, name: HubName, cache_dir: str | None = None) -> tuple[str, str, str]:
    """``(path, commit, snapshot folder)`` of ``name`` in the cache, offline. ``path`` is the
    snapshot folder, or the named file in it."""
    cache = os.path.realpath(cache_dir or hub_cache_dir())
    from huggingface_hub.file_download import repo_folder_name

    repo_root = os.path.join(cache, repo_folder_name(repo_id=name.repo_id, repo_type="model"))
    if not os.path.isdir(repo_root):
        raise UnsupportedCheckpoint(locator, f"{name.repo_id} is not in the Hugging Face cache at {cache} "
                                             "(--download fetches it)", field="repo id")
    repo_root = os.path.realpath(repo_root)
    if not inside(repo_root, cache):
        raise MalformedCheckpoint(repo_root, "the repository's cache folder links outside the cache", field="repo folder")
    revision = name.revision or "main"
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        ref_path = os.path.join(repo_root, "refs", revision)
        if not os.path.lexists(ref_path):
            raise UnsupportedCheckpoint(locator, f"revision {revision!r} of {name.repo_id} is not in the cache "
                                                 "(--download fetches it)", field="revision")
        commit = _read_ref(ref_path, revision)
    snapshot = os.path.join(repo_root, "snapshots", commit)
    if not os.path.isdir(snapshot):
        raise MalformedCheckpoint(os.path.join(repo_root, "refs", revision), f"no snapshot folder for commit {commit}",
                                  field=f"refs/{revision}", offset=0)
    if not inside(os.path.realpath(snapshot), repo_root):
        raise MalformedCheckpoint(snapshot, "the snapshot folder links outside the repository's cache folder",
                                  field="snapshot")
    _check_snapshot(snapshot, repo_root)
    path = os.path.join(snapshot, *name.filename.split("/")) if name.filename else snapshot
    if name.filename and not os.path.lexists(path):
        raise UnsupportedCheckpoint(locator, f"{name.filename} is not in the cached snapshot {commit[:12]} of "
                                             f"{name.repo_id} (--download fetches it)", field="path")
    return path, commit, snapshot


def fetch_repo(name: HubName, cache_dir: str | None = None, endpoint: str | None = None) -> None:
    """Download ``name`` into the cache with ``huggingface_hub`` (the whole snapshot, or the one
    named file). The library's own rules apply: ``HF_HUB_OFFLINE=1`` refuses, ``HF_TOKEN``
    authenticates. Library errors (not found, gated, offline) become one input-error line."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    cache = cache_dir or hub_cache_dir()
    try:
        if name.filename:
            hf_hub_download(name.repo_id, name.filename, revision=name.revision, cache_dir=cache, endpoint=endpoint)
        else:
            snapshot_download(name.repo_id, revision=name.revision, cache_dir=cache, endpoint=endpoint)
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedCheckpoint(str(name), f"download failed: {message}", field="download") from None
