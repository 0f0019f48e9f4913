"""Where a model lives: a path, or a name the machine's model stores resolve (docs/locators.md).

Every input that names a model goes through :func:`locate` (``open_checkpoint`` calls it), so
each command, and the Python API, accepts:

* a path (file or folder), as always;
* ``hf:ORG/NAME[@REVISION][/PATH]``: the local Hugging Face cache (:mod:`.hf_cache`);
* ``ORG/NAME``, a bare repo id, when no file of that name exists and the cache holds it;
* ``ollama:[HOST/][NAMESPACE/]NAME[:TAG]``: Ollama's store, to its GGUF blob (:mod:`.ollama_store`).

Resolution is offline and reads only the stores' own layout; :func:`fetch` (``--download``)
is the one call that may reach the network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from provenance.errors import UnsupportedCheckpoint

HF_PREFIX, OLLAMA_PREFIX = "hf:", "ollama:"
Source = Literal["path", "hf-cache", "ollama"]


@dataclass(frozen=True)
class ModelLocation:
    """A model input as named, and the local file or folder a reader opens for it."""

    locator: str
    path: str
    source: Source = "path"
    name: str | None = None
    """The canonical name in its store (``hf:ORG/NAME@REV``, ``ollama:HOST/NS/NAME:TAG``)."""
    revision: str | None = None
    """The Hugging Face commit, or the SHA-256 of the Ollama manifest's model layer."""
    card_directory: str | None = None
    """The folder whose ``README.md`` is this model's card (a Hugging Face snapshot)."""
    repo_id: str | None = None
    """The Hugging Face repo id (``ORG/NAME``) the cache holds the model under: one of its names."""
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"locator": self.locator, "path": self.path, "source": self.source, "name": self.name,
                "revision": self.revision, "notes": list(self.notes)}


def inside(path: str, root: str) -> bool:
    """Whether the real path ``path`` lies in the real folder ``root`` (stores keep their files there)."""
    return os.path.commonpath([path, root]) == root


def is_locator(text: str) -> bool:
    """Whether ``text`` names a model by store (``hf:``, ``ollama:``) rather than by path."""
    return text.startswith((HF_PREFIX, OLLAMA_PREFIX))


def _bare_repo_id(text: str) -> bool:
    from provenance.formats.hf_cache import is_repo_id

    return text.count("/") == 1 and not os.path.lexists(text) and is_repo_id(text)


def locate(path: str | os.PathLike[str]) -> ModelLocation:
    """The local file or folder ``path`` names (offline). A plain path is returned as is;
    a store name that cannot be resolved raises a :class:`~provenance.errors.CheckpointError`."""
    text = os.fspath(path)
    if text.startswith(HF_PREFIX):
        return _hub(text, text[len(HF_PREFIX):])
    if text.startswith(OLLAMA_PREFIX):
        return _ollama(text, text[len(OLLAMA_PREFIX):])
    if _bare_repo_id(text):
        from provenance.formats.hf_cache import hub_cache_dir, parse_hub_name, resolve_hub_name

        name = parse_hub_name(text, text)
        try:
            resolve_hub_name(text, name)
        except UnsupportedCheckpoint:
            raise UnsupportedCheckpoint(text, f"no such file or folder, and no repo {text} in the Hugging Face cache "
                                              f"at {hub_cache_dir()} (hf:{text} --download fetches it)") from None
        return _hub(text, text)
    return ModelLocation(text, text)


def _hub(locator: str, text: str) -> ModelLocation:
    from provenance.formats.hf_cache import parse_hub_name, resolve_hub_name

    name = parse_hub_name(locator, text)
    path, commit, snapshot = resolve_hub_name(locator, name)
    return ModelLocation(locator, path, "hf-cache", f"hf:{name.repo_id}@{commit}" + (f"/{name.filename}" if name.filename
                                                                                     else ""),
                         commit, card_directory=snapshot, repo_id=name.repo_id)


def _ollama(locator: str, text: str) -> ModelLocation:
    from provenance.formats.ollama_store import parse_ollama_name, resolve_ollama_name, side_layers

    name = parse_ollama_name(locator, text)
    blob, manifest, _ = resolve_ollama_name(locator, name)
    digest = os.path.basename(blob).replace("sha256-", "sha256:")
    return ModelLocation(locator, blob, "ollama", str(name), digest, notes=tuple(side_layers(manifest)))


def fetch(path: str | os.PathLike[str]) -> bool:
    """``--download``: bring a Hugging Face model named by ``hf:`` (or a bare repo id that is no
    local path) into the cache, then it resolves offline like any cached model. Returns whether
    anything was fetched; Ollama names are pulled by Ollama itself (``ollama pull``)."""
    text = os.fspath(path)
    if text.startswith(OLLAMA_PREFIX):
        return False
    if text.startswith(HF_PREFIX) or _bare_repo_id(text):
        from provenance.formats.hf_cache import fetch_repo, parse_hub_name

        body = text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else text
        fetch_repo(parse_hub_name(text, body))
        return True
    return False
