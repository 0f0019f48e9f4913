"""Where shipped synth models live, how they are written, hashed and read back.

Layout under ``data/synth/`` (override with ``$PROVENANCE_SYNTH_DIR``)::

    manifest.json             every model: id, kind, parent, seeds, recipe, losses, hashes
    corpus.npy finetune.npy   the token corpora (uint16), see provenance.synth.corpus
    models/<id>/              a plain HF checkpoint: config.json + model.safetensors

Weights are stored as float16 by default (the whole pool is ~21 MB instead of ~42 MB
in float32); training always runs in float32, and every derivative is trained from its
parent *as stored*, so each shipped file is a function of the shipped files alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from provenance.errors import ProvenanceError
from provenance.formats import open_checkpoint
from provenance.formats.dtypes import torch_dtype
from provenance.hashing import file_sha256  # noqa: F401  (re-exported for the build script and tests)

if TYPE_CHECKING:  # transformers is only needed to train or load models, not to find them
    from transformers import LlamaForCausalLM

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.safetensors"
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class SynthModelNotFound(ProvenanceError):
    """A synth model id that is malformed or not in the shipped data."""


def synth_data_dir() -> Path:
    """``data/synth`` of the source tree, or ``$PROVENANCE_SYNTH_DIR``."""
    env = os.environ.get("PROVENANCE_SYNTH_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data" / "synth"


def synth_model_path(model_id: str, root: Path | None = None) -> Path:
    """Directory of a shipped synth model (``config.json`` + ``model.safetensors``).

    Ids are checked against a strict pattern first, so an id can never name a path
    outside ``models/``.
    """
    if not _ID.match(model_id) or ".." in model_id:
        raise SynthModelNotFound(f"not a synth model id: {model_id!r}")
    path = (root or synth_data_dir()) / "models" / model_id
    if not (path / WEIGHTS_NAME).is_file():
        raise SynthModelNotFound(f"no shipped synth model {model_id!r} under {path.parent}")
    return path


def load_synth_model(model_id: str, root: Path | None = None) -> LlamaForCausalLM:
    """A shipped synth model as a float32 ``LlamaForCausalLM`` in eval mode."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(synth_model_path(model_id, root), dtype=torch.float32,
                                             attn_implementation="sdpa")
    return model.eval()


def load_manifest(root: Path | None = None) -> dict[str, Any]:
    with open((root or synth_data_dir()) / MANIFEST_NAME, encoding="utf-8") as fh:
        manifest: dict[str, Any] = json.load(fh)
    return manifest


def model_ids(kind: str | None = None, root: Path | None = None) -> list[str]:
    """Ids of shipped models, optionally only one ``kind`` (e.g. ``"independent"``)."""
    return [m["id"] for m in load_manifest(root)["models"] if kind is None or m["kind"] == kind]


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of tensor names, dtypes, shapes and bytes, independent of file framing (the
    safetensors header could change with the library version, the weights would not)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def stored_tensors(model: LlamaForCausalLM, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors ``save_pretrained`` writes (tied lm_head left out), cast to ``dtype``."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().to(dtype).contiguous() for k, v in state.items()}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The stored tensors of a synth model, by stored (HF) name, in their stored dtype and
    layout (no q/k permutation), read through the package's reader."""
    weights = {}
    with open_checkpoint(path / WEIGHTS_NAME) as ckpt:
        for info in ckpt.tensors.values():
            dtype = torch_dtype(info.dtype)
            assert dtype is not None, info.dtype  # save_pretrained writes float tensors
            raw = torch.from_numpy(ckpt.raw_rows(info.name))  # a fresh, writable buffer
            weights[info.stored_name] = raw.view(dtype).reshape(info.shape)
    return weights


def save_model(model: LlamaForCausalLM, path: Path, dtype: torch.dtype = torch.float16) -> str:
    """``save_pretrained`` in ``dtype`` (safetensors); returns the weights' tensor hash."""
    path.mkdir(parents=True, exist_ok=True)
    from transformers import LlamaForCausalLM

    out = LlamaForCausalLM._from_config(model.config, attn_implementation="sdpa", dtype=dtype)
    out.load_state_dict(model.state_dict())
    out.tie_weights()
    out.save_pretrained(path, safe_serialization=True)
    return tensors_sha256(read_weights(path))


def rounded_copy(model: LlamaForCausalLM, dtype: torch.dtype) -> LlamaForCausalLM:
    """``model`` after a round trip through ``dtype`` storage, back in float32 (what a
    derivative trained from the shipped parent starts from)."""
    from transformers import LlamaForCausalLM

    copy = LlamaForCausalLM._from_config(model.config, attn_implementation="sdpa")
    copy.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    copy.tie_weights()
    return copy.eval()


def load_synth_tokens(name: str, root: Path | None = None) -> np.ndarray:
    """A shipped corpus (``"corpus"`` or ``"finetune"``) as a (rows, 512) uint16 array."""
    if name not in ("corpus", "finetune"):
        raise SynthModelNotFound(f"no synth corpus named {name!r}")
    path = (root or synth_data_dir()) / f"{name}.npy"
    if not path.is_file():
        raise SynthModelNotFound(f"synth corpus {path} is missing; run scripts/build_synth_models.py")
    return np.load(path, allow_pickle=False)
