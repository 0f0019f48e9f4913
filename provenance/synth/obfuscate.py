"""What a leaker who knows the tool does to a copy: obfuscations for the lineage robustness table.

Each function takes canonical float32 tensors (GGUF names and layout, as
:func:`provenance.compare.variants.load_canonical` reads them) and returns new ones; a
:class:`Recipe` chains them and writes the result through the real writers
(:func:`provenance.compare.variants.write_variant`: the project's llama.cpp-exact quantizer).
Nothing here claims a verdict: ``scripts/lineage_robustness.py`` compares every recipe's
output with its reference and records what ``compare`` says (docs/lineage.md).

* :func:`add_noise`: i.i.d. Gaussian noise at ``amplitude`` times each row's standard
  deviation, on every matrix (enough to break hashes and the exact grid test);
* :func:`magnitude_prune`: the ``fraction`` smallest-magnitude weights of every matrix zeroed;
* :func:`fold_norms`: RMSNorm gains folded into the matrices that read them (gains -> 1),
  the same function;
* :func:`permute_rescale`: unit and head permutations, unit/v-channel rescaling and
  residual rescaling at the norms (:func:`provenance.compare.variants.apply_symmetries`),
  the same function;
* :func:`rotate_residual`: a random rotation of the residual stream, the same function
  (the calibrated test is blind to it: docs/lineage.md, "Limits");
* requantization chains: a :class:`Recipe` step ``("quantize", type)`` stores and reads back
  an intermediate GGUF of that type (``F16``/``BF16`` round the values).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from provenance.codecs.types import plain_type
from provenance.names.arch import ArchRecord

Tensors = dict[str, np.ndarray]

#: norm vector -> the matrices that read the residual it scales
NORM_READERS = {"attn_norm": ("attn_q", "attn_k", "attn_v"), "ffn_norm": ("ffn_gate", "ffn_up")}


def _is_matrix(name: str, value: np.ndarray) -> bool:
    return value.ndim == 2 and min(value.shape) > 1


def add_noise(tensors: Mapping[str, np.ndarray], amplitude: float, seed: int = 0) -> Tensors:
    """Gaussian noise of ``amplitude`` x each row's std added to every matrix."""
    rng = np.random.default_rng(seed)
    out = dict(tensors)
    for name in sorted(tensors):
        w = tensors[name]
        if not _is_matrix(name, w):
            continue
        sigma = w.astype(np.float64).std(axis=1, keepdims=True)
        out[name] = (w + amplitude * sigma * rng.standard_normal(w.shape)).astype(np.float32)
    return out


def magnitude_prune(tensors: Mapping[str, np.ndarray], fraction: float) -> Tensors:
    """The ``fraction`` smallest |w| of every matrix set to zero (the classic pruning recipe)."""
    out = dict(tensors)
    for name, w in tensors.items():
        if not _is_matrix(name, w):
            continue
        k = round(fraction * w.size)
        if k <= 0:
            continue
        flat = w.reshape(-1).copy()
        flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0.0
        out[name] = flat.reshape(w.shape)
    return out


def fold_norms(tensors: Mapping[str, np.ndarray]) -> Tensors:
    """Each block's RMSNorm gains moved into the columns of the matrices after them (gains
    become 1): the network computes the same function up to float rounding."""
    out = dict(tensors)
    for name, gain in tensors.items():
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in NORM_READERS:
            continue
        g = gain.astype(np.float32).reshape(-1)
        for role in NORM_READERS[parts[2]]:
            reader = f"blk.{parts[1]}.{role}.weight"
            if reader in out:
                out[reader] = (out[reader] * g[None, :]).astype(np.float32)
        out[name] = np.ones_like(gain, dtype=np.float32)
    return out


def permute_rescale(tensors: Mapping[str, np.ndarray], arch: ArchRecord, seed: int = 0) -> Tensors:
    """Every function-preserving move of :func:`provenance.compare.variants.apply_symmetries`."""
    from provenance.compare.variants import apply_symmetries

    return apply_symmetries(tensors, arch, seed)[0]


#: matrices that read the residual stream (columns rotated) and write it (rows rotated)
READERS = ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up")
WRITERS = ("attn_output", "ffn_down")


def rotate_residual(tensors: Mapping[str, np.ndarray], seed: int = 0) -> Tensors:
    """A random orthogonal rotation Q of the residual stream, the same function: norm gains
    folded first (RMSNorm commutes with rotations only with unit gains), the final gain folded
    into an untied ``output.weight``; embeddings and readers x Q, writers Q^T x."""
    out = fold_norms(tensors)
    emb = out["token_embd.weight"]
    d = emb.shape[1]
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    q = q * np.sign(np.diag(r))[None, :]
    head = out.get("output.weight", emb)
    gain = out.get("output_norm.weight", np.ones(d, dtype=np.float32)).reshape(-1)
    out["output.weight"] = ((head * gain[None, :]) @ q).astype(np.float32)
    out["output_norm.weight"] = np.ones(d, dtype=np.float32)
    out["token_embd.weight"] = (emb.astype(np.float64) @ q).astype(np.float32)
    for name, w in list(out.items()):
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in READERS:
            out[name] = (w.astype(np.float64) @ q).astype(np.float32)
        elif len(parts) == 4 and parts[0] == "blk" and parts[2] in WRITERS:
            out[name] = (q.T @ w.astype(np.float64)).astype(np.float32)
    return out


def round_to(tensors: Mapping[str, np.ndarray], dtype: str) -> Tensors:
    """Every tensor rounded to a narrow float type (``F16``, ``BF16``) and back (a storage round trip)."""
    plain = plain_type(dtype)
    if plain is None or not plain.narrow_float:
        raise ValueError(f"not a narrow float type: {dtype}")
    torch_dtype = plain.torch_dtype()
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(torch_dtype).float().numpy()
            for k, v in tensors.items()}


def requantize(tensors: Mapping[str, np.ndarray], arch: ArchRecord, ftype: str) -> Tensors:
    """Stored as a llama.cpp ``ftype`` GGUF (the exact quantizer) and read back dequantized."""
    from provenance.compare.variants import load_canonical, write_variant

    if ftype in ("F16", "BF16"):
        return round_to(tensors, ftype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "intermediate.gguf"
        write_variant(path, tensors, arch, ftype, "intermediate")
        return load_canonical(path)[0]


Step = tuple[str, float | str | int]
"""``("noise", amplitude)``, ``("prune", fraction)``, ``("fold", 0)``, ``("permute", seed)``,
``("rotate", seed)``, ``("quantize", intermediate ftype)``: applied in order."""


@dataclass(frozen=True)
class Recipe:
    """An obfuscation: steps applied in order, then stored as ``final`` (None: F32)."""

    label: str
    steps: tuple[Step, ...] = ()
    final: str | None = None
    transformations: tuple[str, ...] = field(default=())
    """What a truthful verdict should name (``permuted``, ``rescaled``, ``noise``, ``pruned``,
    ``quantized``, ``chain``)."""

    def apply(self, tensors: Mapping[str, np.ndarray], arch: ArchRecord) -> Tensors:
        out = dict(tensors)
        for op, arg in self.steps:
            if op == "noise":
                out = add_noise(out, float(arg), seed=17)
            elif op == "prune":
                out = magnitude_prune(out, float(arg))
            elif op == "fold":
                out = fold_norms(out)
            elif op == "permute":
                out = permute_rescale(out, arch, int(arg))
            elif op == "rotate":
                out = rotate_residual(out, int(arg))
            elif op == "quantize":
                out = requantize(out, arch, str(arg))
            else:
                raise ValueError(f"unknown obfuscation step {op!r}")
        return out

    def write(self, source: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
        """Read ``source``, apply the steps, store ``output`` as ``final`` by the exact quantizer."""
        from provenance.compare.variants import load_canonical, write_variant

        tensors, arch, _ = load_canonical(source)
        write_variant(output, self.apply(tensors, arch), arch, self.final, self.label)
