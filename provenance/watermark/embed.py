"""Write a marked copy of a checkpoint: ``w + a * sigma_row(w) * key`` on the chosen tensors.

Streams tensor by tensor (one tensor, or for safetensors one shard, in memory). Outputs
keep the input's format, names, layout, storage types and metadata; nothing in the copy
says it is marked (a metadata flag would tell the leaker what to strip).

* GGUF (F32/F16/BF16 tensors marked; every other tensor copied byte for byte) through
  ``gguf.GGUFWriter``, all metadata key/values copied with their stored types.
* safetensors: a single file is written as a single file; an HF directory (single or
  sharded) becomes a full directory copy: config, tokenizer and other files copied,
  shards rewritten under the same names with ``safetensors.torch.save_file``. Canonical
  q/k rows are mapped back to HF's layout before writing.

The amplitude ``a`` is relative to each row's standard deviation. The default 1e-3 sits
~5x below Q8_0's rounding noise (step ~ amax/127 ~ 0.017 sigma for Gaussian-like
blocks of 32, RMS step/sqrt(12) ~ 0.005 sigma) and at the scale of one f16 ulp, yet
gives z ~ a*sqrt(N) ~ 80 blind on a 7B model.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from provenance.errors import ProvenanceError
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.gguf_copy import SPLIT_KEYS, copy_gguf_metadata
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


def _q8_noise_rms(w: np.ndarray) -> float:
    """RMS rounding error Q8_0 would add: per block of 32, step = amax/127, error ~ U(+-step/2)."""
    flat = w.reshape(-1)
    usable = flat.size // 32 * 32
    if usable == 0:
        return float("nan")
    step = np.abs(flat[:usable].reshape(-1, 32)).max(axis=1) / 127.0
    return float(np.sqrt(np.mean(step.astype(np.float64) ** 2) / 12.0))


_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _to_storage(values: np.ndarray, dtype: str) -> torch.Tensor:
    """Round float64 values to the storage type (round to nearest even, as converters do)."""
    return torch.from_numpy(values).to(torch.float32).to(_TORCH_DTYPES[dtype.upper()])


def _mark_tensor(ckpt: Checkpoint, info: TensorInfo, key: KeySource, amplitude: float) -> tuple[torch.Tensor, TensorChange]:
    """The marked tensor in canonical layout and storage dtype, and what changed."""
    w = ckpt.read_rows(info.name)
    shape = (info.n_rows, info.row_length)
    marked = _to_storage(mark_rows(w, key.rows(info.name, shape, 0, shape[0]), amplitude), info.dtype)
    stored = marked.to(torch.float64).numpy()
    delta = stored - w
    norm_w = float(np.linalg.norm(w.astype(np.float64)))
    rms_delta = float(np.sqrt(np.mean(delta**2)))
    q8 = _q8_noise_rms(w)
    change = TensorChange(
        info.name,
        w.size,
        float(np.linalg.norm(delta)) / norm_w if norm_w else 0.0,
        rms_delta / q8 if q8 else float("nan"),
    )
    return marked, change


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
    Path(output).parent.mkdir(parents=True, exist_ok=True)  # temp files go beside the output
    with open_checkpoint(source) as ckpt:
        report = EmbedReport(str(source), str(output), key.label, amplitude, ckpt.format)
        targets = _targets(ckpt, selector or default_selector, report)
        if ckpt.format == "gguf":
            _write_gguf(ckpt, Path(output), targets, key, amplitude, report)
        elif ckpt.format in ("safetensors", "safetensors-sharded", "hf-directory"):
            _write_safetensors(ckpt, Path(output), targets, key, amplitude, report)
        else:
            raise EmbedError(f"{source}: cannot write {ckpt.format} checkpoints (GGUF and safetensors only)")
    return report


# ----- GGUF ------------------------------------------------------------------------------
def _write_gguf(
    ckpt: Checkpoint, output: Path, targets: set[str], key: KeySource, amplitude: float, report: EmbedReport
) -> None:
    import gguf

    header = ckpt.headers[0]  # type: ignore[attr-defined]
    arch = header.metadata.get("general.architecture", "llama")
    tmp = output.with_name(f".{output.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        copy_gguf_metadata(ckpt, writer, SPLIT_KEYS)  # a split input is written whole
        infos = list(ckpt.tensors.values())
        for info in infos:
            qtype = gguf.GGMLQuantizationType(info.ggml_type)
            writer.add_tensor_info(
                info.name, (*info.shape[:-1], info.row_bytes), np.dtype(np.uint8), info.n_bytes, raw_dtype=qtype
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for info in infos:
            if info.name in targets:
                marked, change = _mark_tensor(ckpt, info, key, amplitude)
                report.tensors.append(change)
                data = marked.contiguous().view(torch.uint8).numpy()
            else:
                data = (
                    np.concatenate([np.frombuffer(chunk, dtype=np.uint8) for chunk in ckpt.iter_raw(info.name)])
                    if info.n_bytes
                    else np.zeros(0, np.uint8)
                )
            writer.write_tensor_data(data)
        writer.close()
        os.replace(tmp, output)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


# ----- safetensors -----------------------------------------------------------------------
def _write_safetensors(
    ckpt: Checkpoint, output: Path, targets: set[str], key: KeySource, amplitude: float, report: EmbedReport
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from provenance.names.qk_permute import gguf_to_hf_rows

    by_file: dict[str, list[TensorInfo]] = {}
    for info in ckpt.tensors.values():
        by_file.setdefault(info.file, []).append(info)
    directory_input = ckpt.format != "safetensors" or os.path.isdir(ckpt.path)
    if directory_input:
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    else:
        staging = output.parent
    try:
        for shard, infos in by_file.items():
            tensors: dict[str, torch.Tensor] = {}
            with safe_open(shard, framework="pt") as handle:
                for info in infos:
                    if info.name in targets:
                        marked, change = _mark_tensor(ckpt, info, key, amplitude)
                        report.tensors.append(change)
                        if info.qk_heads is not None:  # back to HF's rotate-half row order
                            marked = gguf_to_hf_rows(marked, info.qk_heads)
                        tensors[info.stored_name] = marked.reshape(info.shape).contiguous()
                    else:
                        tensors[info.stored_name] = handle.get_tensor(info.stored_name)
                metadata = handle.metadata()
            target = staging / os.path.basename(shard) if directory_input else staging / f".{output.name}.tmp"
            save_file(tensors, str(target), metadata=metadata)
            del tensors
            if not directory_input:
                os.replace(target, output)
        if directory_input:
            source_dir = Path(ckpt.path if os.path.isdir(ckpt.path) else os.path.dirname(ckpt.path))
            for entry in sorted(source_dir.iterdir()):
                if entry.is_symlink() or not entry.is_file() or (staging / entry.name).exists():
                    continue  # shards already written; links are not followed out of the model
                shutil.copy2(entry, staging / entry.name)
            if output.exists():
                shutil.rmtree(output)
            os.replace(staging, output)
    except BaseException:
        if directory_input:
            shutil.rmtree(staging, ignore_errors=True)
        raise
