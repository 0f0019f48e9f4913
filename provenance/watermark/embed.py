"""Write a marked copy of a checkpoint: ``w + a * sigma_row(w) * key`` on the chosen tensors.

Written by the package's one model writer (:func:`provenance.formats.write.write_checkpoint`:
atomic, streamed a chunk of rows at a time, memory flat in model size). Outputs keep the
input's format, names, layout, storage types and metadata; nothing in the copy says it is
marked (a metadata flag would tell the leaker what to strip).

* GGUF (F32/F16/BF16 tensors marked; every other tensor copied byte for byte), all
  metadata key/values copied with their stored types; a split input is written whole.
* safetensors: a single file is written as a single file; an HF directory (single or
  sharded) becomes a full directory copy: config, tokenizer and other files copied,
  shards rewritten under the same names. Canonical q/k rows go back to HF's layout.

The amplitude ``a`` is relative to each row's standard deviation. The default 1e-3 sits
~5x below Q8_0's rounding noise (step ~ amax/127 ~ 0.017 sigma for Gaussian-like
blocks of 32, RMS step/sqrt(12) ~ 0.005 sigma) and at the scale of one f16 ulp, yet
gives z ~ a*sqrt(N) ~ 80 blind on a 7B model.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from provenance.errors import ProvenanceError, input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.dtypes import torch_dtype
from provenance.formats.write import write_checkpoint
from provenance.watermark.keys import KeySource
from provenance.watermark.options import DEFAULT_AMPLITUDE
from provenance.watermark.select import Selector, default_selector, markable


class EmbedError(ProvenanceError):
    """The input cannot be marked as asked."""


@dataclass
class TensorChange:
    name: str
    n: int
    rel_change: float
    """||stored delta|| / ||w||: the change actually written, after storage rounding."""
    q8_ratio: float
    """RMS stored delta / RMS Q8_0 rounding error estimated from the tensor's blocks."""

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.name, "n": self.n, "rel_change": self.rel_change, "q8_ratio": self.q8_ratio}


@dataclass
class EmbedReport:
    source: str
    output: str
    client: str
    amplitude: float
    format: str
    tensors: list[TensorChange] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def n_marked(self) -> int:
        return sum(t.n for t in self.tensors)

    def summary(self) -> dict[str, Any]:
        if not self.tensors:
            return {"n_marked": 0}
        weights = np.array([t.n for t in self.tensors], dtype=np.float64)
        rel = np.array([t.rel_change for t in self.tensors])
        q8 = np.array([t.q8_ratio for t in self.tensors])
        return {
            "n_marked": int(weights.sum()),
            "rel_change_rms": float(np.sqrt(np.sum(weights * rel**2) / weights.sum())),
            "q8_ratio_rms": float(np.sqrt(np.sum(weights * q8**2) / weights.sum())),
            "expected_blind_z": float(self.amplitude * math.sqrt(weights.sum())),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "provenance.watermark-embed/1", "source": self.source, "output": self.output,
            "client": self.client, "amplitude": self.amplitude, "format": self.format,
            "summary": self.summary(), "tensors": [t.to_dict() for t in self.tensors], "skipped": self.skipped,
        }


def mark_rows(w: np.ndarray, key_rows: np.ndarray, amplitude: float) -> np.ndarray:
    """``w + amplitude * sigma_row(w) * key`` in float64 (the caller rounds to storage)."""
    w64 = w.astype(np.float64)
    sigma = w64.std(axis=1, keepdims=True)
    return w64 + amplitude * sigma * key_rows


def _to_storage(values: np.ndarray, dtype: str) -> torch.Tensor:
    """Round float64 values to the storage type (round to nearest even, as converters do)."""
    target = torch_dtype(dtype)
    assert target is not None, dtype  # markable() admits float storage types only
    return torch.from_numpy(values).to(torch.float32).to(target)


class _Marker:
    """The marked rows of one tensor, chunk by chunk as the writer asks for them, in its
    storage type; keeps the sums :class:`TensorChange` needs. The writer's chunks hold whole
    multiples of 256 weights, so Q8_0's blocks of 32 never straddle two chunks."""

    def __init__(self, ckpt: Checkpoint, info: TensorInfo, key: KeySource, amplitude: float) -> None:
        self.ckpt, self.info, self.key, self.amplitude = ckpt, info, key, amplitude
        self.sum_w2 = self.sum_d2 = self.sum_step2 = 0.0
        self.n_blocks = 0

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        info = self.info
        w = self.ckpt.read_rows(info.name, start, stop)
        shape = (info.n_rows, info.row_length)
        marked = _to_storage(mark_rows(w, self.key.rows(info.name, shape, start, stop), self.amplitude), info.dtype)
        delta = marked.to(torch.float64).numpy() - w
        self.sum_w2 += float(np.dot(w.reshape(-1).astype(np.float64), w.reshape(-1)))
        self.sum_d2 += float(np.dot(delta.reshape(-1), delta.reshape(-1)))
        # Q8_0's rounding error per block of 32: step = amax/127, error ~ U(+-step/2)
        flat = w.reshape(-1)
        usable = flat.size // 32 * 32
        step = np.abs(flat[:usable].reshape(-1, 32)).max(axis=1) / 127.0
        self.sum_step2 += float(np.sum(step.astype(np.float64) ** 2))
        self.n_blocks += step.size
        return marked

    def change(self) -> TensorChange:
        n = self.info.n_elements
        q8 = math.sqrt(self.sum_step2 / self.n_blocks / 12.0) if self.n_blocks else float("nan")
        norm_w = math.sqrt(self.sum_w2)
        return TensorChange(
            self.info.name, n,
            math.sqrt(self.sum_d2) / norm_w if norm_w else 0.0,
            math.sqrt(self.sum_d2 / n) / q8 if q8 else float("nan"),
        )


def _targets(ckpt: Checkpoint, selector: Selector, report: EmbedReport) -> set[str]:
    chosen = set()
    for name, info in ckpt.tensors.items():
        if not selector(info):
            continue
        if markable(info):
            chosen.add(name)
        else:
            report.skipped.append(f"{name}: stored as {info.dtype}, only F32/F16/BF16 tensors can be marked")
    if not chosen:
        raise EmbedError(f"{ckpt.path}: no tensor to mark (quantized input? mark the F16/F32 source, then quantize)")
    return chosen


@input_boundary
def embed_checkpoint(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    key: KeySource,
    amplitude: float = DEFAULT_AMPLITUDE,
    selector: Selector | None = None,
) -> EmbedReport:
    """Write a marked copy of ``source`` to ``output`` and report the relative change."""
    if not (0 < amplitude < 1):
        raise EmbedError(f"amplitude {amplitude} must be in (0, 1) (relative to each row's std)")
    with open_checkpoint(source) as ckpt:
        report = EmbedReport(str(source), str(output), key.label, amplitude, ckpt.format)
        targets = _targets(ckpt, selector or default_selector, report)
        if not ckpt.format.startswith(("gguf", "safetensors", "hf")):
            raise EmbedError(f"{source}: cannot write {ckpt.format} checkpoints (GGUF and safetensors only)")
        markers = {name: _Marker(ckpt, ckpt.info(name), key, amplitude) for name in ckpt.tensors if name in targets}
        write_checkpoint(ckpt, output, replace=markers)
        report.tensors = [marker.change() for marker in markers.values()]
    return report
