"""Models pulled by Ollama, named ``ollama:[HOST/][NAMESPACE/]NAME[:TAG]``, resolved to their GGUF blob.

Ollama's store (``OLLAMA_MODELS``, default ``~/.ollama/models``; docs/locators.md) keeps one
manifest per name at ``manifests/<host>/<namespace>/<name>/<tag>`` (defaults
``registry.ollama.ai``, ``library``, ``latest``): a Docker distribution v2 manifest whose
layers name blobs by SHA-256 digest, stored at ``blobs/sha256-<hex>``. The layer of media type
``application/vnd.ollama.image.model`` is the GGUF file, which the GGUF reader then opens like
any other (nothing is trusted because it came from Ollama).

The manifest is hostile input: read bounded, strict JSON, every field typed and every digest
a SHA-256 (so a digest can never name a path), the blob a regular file inside ``blobs/`` whose
size is the one the manifest states.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from provenance.errors import LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats.files import read_capped
from provenance.formats.jsonsafe import loads_strict, text_offset
from provenance.formats.locators import inside

MAX_MANIFEST_BYTES = 1 << 20
"""Real manifests are under 2 KiB."""
MAX_LAYERS = 1024
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.ollama.manifest.list.v2+json"
MODEL_LAYER = "application/vnd.ollama.image.model"
TENSOR_LAYER = "application/vnd.ollama.image.tensor"
#: layers beside the weights that change what runs (reported, never applied here)
SIDE_LAYERS = {"application/vnd.ollama.image.adapter": "a LoRA adapter", "application/vnd.ollama.image.projector":
               "a multimodal projector"}
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
# Ollama's name rules (types/model/name.go): letters, digits, '_', '-', '.'; no '.' in a
# namespace; parts of at most 128 bytes; never "." or ".." (they would be path steps here).
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        return f"ollama:{self.host}/{self.namespace}/{self.model}:{self.tag}"


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    """``sha256:<64 lowercase hex>``."""
    size: int

    @property
    def blob_name(self) -> str:
        return "sha256-" + self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class OllamaManifest:
    schema_version: int
    media_type: str
    config: Layer | None
    layers: tuple[Layer, ...]


def models_dir() -> str:
    """Ollama's store: ``OLLAMA_MODELS``, else ``~/.ollama/models`` (as the server sets it)."""
    return os.environ.get("OLLAMA_MODELS") or os.path.join(os.path.expanduser("~"), ".ollama", "models")


def parse_ollama_name(locator: str, text: str) -> OllamaName:
    """``[HOST/][NAMESPACE/]NAME[:TAG]`` with Ollama's defaults filled in."""
    name, _, tag = text.partition(":") if text.count(":") == 1 else (text, "", "")
    if text.count(":") > 1:
        raise UnsupportedCheckpoint(locator, "an Ollama name has at most one ':' (NAME:TAG)", field="name")
    parts = name.split("/")
    if len(parts) > 3:
        raise UnsupportedCheckpoint(locator, "an Ollama name is [HOST/][NAMESPACE/]NAME[:TAG]", field="name")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    tag = tag or DEFAULT_TAG
    for field, value, rule in (("host", host, _PART), ("namespace", namespace, _NAMESPACE), ("name", model, _PART),
                               ("tag", tag, _PART)):
        if not rule.fullmatch(value) or ".." in value:
            raise UnsupportedCheckpoint(locator, f"{field} {value!r} is not a valid Ollama name part", field=field)
    return OllamaName(host, namespace, model, tag)


def _fail(path: str, where: str, message: str, raw: bytes, key: str | None = None, value: Any = None,
          start: int = 0) -> MalformedCheckpoint:
    return MalformedCheckpoint(path, message, field=f"manifest: {where}", offset=text_offset(raw, value, key, start))


def _layer(value: Any, path: str, where: str, raw: bytes, start: int) -> Layer:
    if type(value) is not dict:
        raise _fail(path, where, "a layer must be a JSON object", raw, start=start)
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if type(media_type) is not str or not 0 < len(media_type) <= 256:
        raise _fail(path, f"{where}.mediaType", f"expected a media type string, found {media_type!r:.60}", raw,
                    "mediaType", media_type, start)
    if type(digest) is not str or not (match := _DIGEST.fullmatch(digest)):
        raise _fail(path, f"{where}.digest", f"expected a sha256:<64 hex> digest, found {digest!r:.80}", raw, "digest",
                    digest, start)
    if type(size) is not int or not 0 <= size < 1 << 50:
        raise _fail(path, f"{where}.size", f"expected a byte count, found {size!r:.40}", raw, "size", size, start)
    return Layer(media_type, "sha256:" + match.group(1).lower(), size)


def parse_manifest(raw: bytes, path: str) -> OllamaManifest:
    """A manifest's bytes -> :class:`OllamaManifest`, every field checked."""
    document = loads_strict(raw, path, "manifest")
    if type(document) is not dict:
        raise _fail(path, "(root)", "the manifest is not a JSON object", raw)
    version, media_type = document.get("schemaVersion"), document.get("mediaType", MANIFEST_V2)
    if version != 2 or type(version) is not int:
        raise _fail(path, "schemaVersion", f"expected schemaVersion 2, found {version!r:.40}", raw, "schemaVersion")
    if type(media_type) is not str:
        raise _fail(path, "mediaType", "expected a media type string", raw, "mediaType")
    if media_type == MANIFEST_LIST:
        raise UnsupportedCheckpoint(path, "an Ollama manifest list (one model per runner) is not supported; "
                                          "name one runner's model", field="manifest: mediaType")
    if media_type != MANIFEST_V2:
        raise _fail(path, "mediaType", f"unknown manifest media type {media_type!r:.80}", raw, "mediaType")
    layers = document.get("layers")
    if type(layers) is not list:
        raise _fail(path, "layers", "expected a list of layers", raw, "layers")
    if len(layers) > MAX_LAYERS:
        raise LimitExceeded(path, f"{len(layers)} layers exceed the cap of {MAX_LAYERS}", field="manifest: layers",
                            offset=max(raw.find(b'"layers"'), 0))
    config = document.get("config")
    in_config, in_layers = max(raw.find(b'"config"'), 0), max(raw.find(b'"layers"'), 0)
    return OllamaManifest(version, media_type, _layer(config, path, "config", raw, in_config) if config is not None else None,
                          tuple(_layer(layer, path, f"layers[{i}]", raw, in_layers) for i, layer in enumerate(layers)))


def model_blob(manifest: OllamaManifest, manifest_path: str, root: str) -> tuple[str, Layer]:
    """The GGUF blob of the manifest's model layer, checked: a regular file inside ``blobs/``
    of the size the manifest states."""
    models = [i for i, layer in enumerate(manifest.layers) if layer.media_type == MODEL_LAYER]
    if not models:
        if any(layer.media_type.startswith(TENSOR_LAYER) for layer in manifest.layers):
            raise UnsupportedCheckpoint(manifest_path, "a safetensors-style Ollama model (one blob per tensor) is not "
                                                       "supported; only GGUF model layers are", field="manifest: layers")
        raise MalformedCheckpoint(manifest_path, f"no layer of media type {MODEL_LAYER}", field="manifest: layers")
    if len(models) > 1:
        raise MalformedCheckpoint(manifest_path, f"{len(models)} model layers; Ollama runs one",
                                  field=f"manifest: layers[{models[1]}]")
    index = models[0]
    layer = manifest.layers[index]
    blobs = os.path.realpath(os.path.join(root, "blobs"))
    blob = os.path.join(blobs, layer.blob_name)
    if not os.path.lexists(blob):
        raise UnsupportedCheckpoint(manifest_path, f"the model blob {layer.blob_name} is missing from {blobs} "
                                                   "(an incomplete pull?)", field=f"manifest: layers[{index}].digest")
    if not inside(os.path.realpath(blob), blobs):
        raise MalformedCheckpoint(blob, "the blob links outside Ollama's blob folder", field=f"manifest: layers[{index}]")
    info = os.stat(blob)
    if not stat.S_ISREG(info.st_mode):
        raise UnsupportedCheckpoint(blob, "the blob is not a regular file", field=f"manifest: layers[{index}]", offset=0)
    if info.st_size != layer.size:
        raise MalformedCheckpoint(blob, f"the blob holds {info.st_size} bytes; the manifest says {layer.size}",
                                  field=f"manifest: layers[{index}].size", offset=0)
    return blob, layer


def resolve_ollama_name(locator: str, name: OllamaName, root: str | None = None) -> tuple[str, OllamaManifest, str]:
    """``(GGUF blob path, manifest, manifest path)`` of ``name`` in Ollama's store."""
    root = os.path.realpath(root or models_dir())
    manifests = os.path.join(root, "manifests")
    path = os.path.join(manifests, name.host, name.namespace, name.model, name.tag)
    if not os.path.lexists(path):  # some Ollama versions store names lowercased
        lowered = os.path.join(manifests, name.host.lower(), name.namespace.lower(), name.model.lower(), name.tag.lower())
        path = lowered if os.path.lexists(lowered) else path
    if not os.path.lexists(path):
        raise UnsupportedCheckpoint(locator, f"no Ollama manifest for {name} in {root} (pull it with `ollama pull`)",
                                    field="name")
    if not inside(os.path.realpath(path), os.path.realpath(manifests)):
        raise MalformedCheckpoint(path, "the manifest links outside Ollama's manifest folder", field="manifest")
    manifest = parse_manifest(read_capped(path, "manifest", MAX_MANIFEST_BYTES), path)
    blob, _ = model_blob(manifest, path, root)
    return blob, manifest, path


def side_layers(manifest: OllamaManifest) -> list[str]:
    """What the manifest adds beside the weights that is not read here (adapters, projectors)."""
    return [f"{SIDE_LAYERS[layer.media_type]} ({layer.digest[:19]}...) is part of this Ollama model but not read"
            for layer in manifest.layers if layer.media_type in SIDE_LAYERS]
