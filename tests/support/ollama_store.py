"""Ollama's model store, laid out as ``ollama create``/``ollama pull`` leave it.

The layout follows Ollama's own code (``manifest/paths.go``, ``manifest/layer.go``,
``types/model/config.go`` in github.com/ollama/ollama): blobs named ``sha256-<hex>`` of their
content under ``blobs/``, the config blob a ``ConfigV2`` JSON, and the manifest written by
Go's ``json.Marshal`` of its ``Manifest`` struct (compact, fields in struct order:
``schemaVersion``, ``mediaType``, ``config``, ``layers``; each layer ``mediaType``, ``digest``,
``size``) at ``manifests/<host>/<namespace>/<name>/<tag>``.

:data:`REGISTRY_MANIFEST` is a manifest as registry.ollama.ai serves it for a real model
(``library/gemma4:e4b``, as quoted publicly by users mirroring it by hand): the same fields and
media types this module writes.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_TYPE = "application/vnd.ollama.image.model"

REGISTRY_MANIFEST = (
    '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":'
    '"application/vnd.docker.container.image.v1+json","digest":"sha256:f0988ff50a2458c598ff6b1b87b94d0f5c44d73061c2795391878b00b2285e11",'
    '"size":473},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":'
    '"sha256:4c27e0f5b5adf02ac956c7322bd2ee7636fe3f45a8512c9aba5385242cb6e09a","size":9608338848},{"mediaType":'
    '"application/vnd.ollama.image.license","digest":"sha256:7339fa418c9ad3e8e12e74ad0fd26a9cc4be8703f9c110728a992b193be85cb2",'
    '"size":11355},{"mediaType":"application/vnd.ollama.image.params","digest":'
    '"sha256:56380ca2ab89f1f68c283f4d50863c0bcab52ae3f1b9a88e4ab5617b176f71a3","size":42}]}'
)


def _go_json(value: object) -> bytes:
    """Go's ``json.Marshal``: compact, no spaces, keys in the order given."""
    return json.dumps(value, separators=(",", ":")).encode()


def add_blob(root: Path, data: bytes) -> dict[str, object]:
    """Store ``data`` as Ollama does and return its layer fields (no media type yet)."""
    digest = hashlib.sha256(data).hexdigest()
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_ollama_model(root: Path, gguf: Path, name: str = "tiny", tag: str = "latest", namespace: str = "library",
                       host: str = "registry.ollama.ai", family: str = "llama", file_type: str = "F32") -> Path:
    """A model as ``ollama create`` stores it from a GGUF file: model, template and params
    layers plus the config blob; returns the manifest's path."""
    model = {"mediaType": MODEL_TYPE, **add_blob(root, gguf.read_bytes())}
    template = {"mediaType": "application/vnd.ollama.image.template", **add_blob(root, b"{{ .Prompt }}")}
    params = {"mediaType": "application/vnd.ollama.image.params", **add_blob(root, _go_json({"stop": ["</s>"]}))}
    config = _go_json({"model_format": "gguf", "model_family": family, "model_families": [family],
                       "model_type": "tiny", "file_type": file_type, "architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": [model["digest"], template["digest"], params["digest"]]}})
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_V2, "config": {"mediaType": CONFIG_TYPE, **add_blob(root, config)},
                "layers": [model, template, params]}
    path = root / "manifests" / host / namespace / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_go_json(manifest))
    return path


def copy_store(source: Path, target: Path) -> Path:
    """A private copy of a store (blobs included) for a test to damage."""
    shutil.copytree(source, target, symlinks=True)
    return target
