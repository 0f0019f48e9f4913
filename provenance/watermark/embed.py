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

The marked rows are computed by one compiled pass per chunk (:func:`mark_rows`): the row's
standard deviation, the key generated in place (:mod:`.keygen`), ``w + a sigma k`` in
float32, then one torch cast to the storage type into a reused buffer; no float64 copy of
anything larger than a row's sums.

The amplitude ``a`` is relative to each row's standard deviation. The default 1e-3 sits
~5x below Q8_0's rounding noise (step ~ amax/127 ~ 0.017 sigma for Gaussian-like
blocks of 32, RMS step/sqrt(12) ~ 0.005 sigma) and at the scale of one f16 ulp, yet
gives z ~ a*sqrt(N) ~ 80 blind on a 7B model.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from provenance.errors import ProvenanceError, input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.dtypes import torch_dtype
from provenance.formats.rows import RowReader
from provenance.formats.write import write_checkpoint
from provenance.jit import kernel
from provenance.progress import Meter, ProgressCallback
from provenance.threads import torch_threads
from provenance.watermark.keygen import fill_gaussian
from provenance.watermark.keys import KeySource
from provenance.watermark.options import DEFAULT_AMPLITUDE
from provenance.watermark.plan import row_ranges
from provenance.watermark.select import Selector, default_selector, markable
from provenance.watermark.signals import constant_rows, dot64, row_moments

#: Q8_0's block length: the change is reported against its rounding noise
Q8_BLOCK = 32


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


@kernel
def mark_rows(w: np.ndarray, words: np.ndarray, first: np.int64, amplitude: float, out: np.ndarray) -> None:
    """``out = w + float32(amplitude * sigma_row(w)) * key`` (float32; the caller rounds to
    storage); ``first``: the key element of ``w[0, 0]``, ``words``: the key's generator words."""
    rows, cols = w.shape
    ones, zero = constant_rows(cols)
    for r in range(rows):
        _, sigma = row_moments(w[r], ones, zero, out[r])
        fill_gaussian(words, first + r * cols, out[r])
        scale = np.float32(amplitude * sigma)
        for c in range(cols):
            out[r, c] = w[r, c] + scale * out[r, c]


def mark_into(w_t: torch.Tensor, name: str, shape: tuple[int, int], first_row: int, key: KeySource, amplitude: float,
              out: torch.Tensor) -> None:
    """``out = w + a * sigma_row(w) * key`` (float32, before storage rounding) for rows
    ``[first_row, first_row + len(w_t))`` of tensor ``name`` viewed as ``shape``: the mark as
    :func:`embed_checkpoint` writes it, also what lineage adds to the owner's model to judge a
    traced copy (:mod:`.known_mark`)."""
    words = getattr(key, "words", None)
    if words is not None:
        mark_rows(w_t.numpy(), words(name), first_row * shape[1], amplitude, out.numpy())
    else:  # a key given as arrays: the same arithmetic with its rows
        k = torch.from_numpy(np.ascontiguousarray(key.rows(name, shape, first_row, first_row + w_t.shape[0])))
        sigma = w_t.double().std(dim=1, unbiased=False, keepdim=True).float()
        torch.add(w_t, k * (amplitude * sigma), out=out)


@kernel
def change_sums(w: np.ndarray, stored: np.ndarray, scratch: np.ndarray, sums: np.ndarray) -> None:
    """Adds ``sum(w**2)`` and ``sum((stored - w)**2)`` of float32 rows to ``sums[0:2]``."""
    flat_w, flat_s = w.reshape(-1), stored.reshape(-1)
    n = flat_w.shape[0]
    for i in range(n):
        scratch[i] = flat_s[i] - flat_w[i]
    sums[0] += dot64(flat_w, flat_w)
    sums[1] += dot64(scratch[:n], scratch[:n])


class _Buffers:
    """Flat buffers shared by every tensor's marker, grown to the largest chunk and then kept:
    one tensor is marked at a time (the writer asks for the next tensor's first chunk only
    after writing the last one's, and nothing is read or marked ahead across tensors), and
    fresh buffers per tensor cost a page fault per 4 KB touched, for each of the ~220 marked
    tensors of a 7B model: system time."""

    def __init__(self) -> None:
        self._flat: dict[tuple[str, int, torch.dtype], torch.Tensor] = {}

    def rows(self, role: str, turn: int, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A ``(rows, cols)`` view of buffer ``role`` of slot ``turn``."""
        key, n = (role, turn, dtype), rows * cols
        flat = self._flat.get(key)
        if flat is None or flat.numel() < n:
            flat = self._flat[key] = torch.empty(n, dtype=dtype)
        return flat[:n].view(rows, cols)


class _Slot:
    """One chunk's buffers: the marked float32 rows, the same in storage type, those read
    back as float32, and scratch."""

    def __init__(self, buffers: _Buffers, turn: int, rows: int, cols: int, dtype: torch.dtype) -> None:
        self.marked = buffers.rows("marked", turn, rows, cols)
        self.stored = self.marked if dtype == torch.float32 else buffers.rows("stored", turn, rows, cols, dtype)
        self.back = self.marked if dtype == torch.float32 else buffers.rows("back", turn, rows, cols)
        self.scratch = buffers.rows("scratch", turn, 1, rows * cols).view(-1)


class _Marker:
    """The marked rows of one tensor, chunk by chunk as the writer asks for them, in its
    storage type; keeps the sums :class:`TensorChange` needs.

    The writer asks for consecutive chunks of one size and writes each before asking for
    the next, so while it writes one, the next is already being marked on ``pool`` (two
    buffer slots, alternating), and the one after it is being read and decoded on ``reads``
    (two input buffers, alternating): reading, marking and writing overlap, so a read's wait
    for the disk or its system time never holds up the marking threads (docs/watermark.md,
    "Embedding"). Each chunk's rows are split between ``threads`` on ``workers``. The chunks
    hold whole multiples of 256 weights, so Q8_0's blocks of 32 never straddle two of them."""

    def __init__(self, ckpt: Checkpoint, info: TensorInfo, key: KeySource, amplitude: float,
                 pool: ThreadPoolExecutor, workers: ThreadPoolExecutor, threads: int,
                 reads: ThreadPoolExecutor, buffers: _Buffers) -> None:
        self.ckpt, self.info, self.key, self.amplitude, self.buffers = ckpt, info, key, amplitude, buffers
        self.pool, self.workers, self.threads, self.reads = pool, workers, threads, reads
        self.sums = np.zeros(4)
        self._reader: RowReader | None = None
        self._turn = 0
        self._ahead: tuple[tuple[int, int], Future[torch.Tensor]] | None = None
        self._loading: tuple[tuple[int, int], Future[torch.Tensor]] | None = None

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        info = self.info
        if self._ahead is not None and self._ahead[0] == (start, stop):
            result = self._ahead[1].result()
        else:
            if self._ahead is not None:  # not the chunk foreseen: let that one finish first
                self._ahead[1].result()
            result = self._mark(start, stop, self._turn)
        self._turn ^= 1
        self._ahead = None
        after = (stop, min(info.n_rows, 2 * stop - start))
        if after[0] < info.n_rows:
            self._ahead = (after, self.pool.submit(self._mark, *after, self._turn))
        else:
            self._release()
        return result

    def _slot(self, turn: int, rows: int) -> _Slot:
        target = torch_dtype(self.info.dtype)
        assert target is not None, self.info.dtype  # markable() admits float storage types only
        return _Slot(self.buffers, turn, rows, self.info.row_length, target)

    def _mark(self, start: int, stop: int, turn: int) -> torch.Tensor:
        rows = stop - start
        w_t = self._input(start, stop, turn)
        slot = self._slot(turn, rows)
        ranges = row_ranges(rows, self.threads)
        sums = np.zeros((len(ranges), 4))
        futures = [self.workers.submit(self._mark_part, w_t, slot, start, lo, hi, sums[p]) for p, (lo, hi) in enumerate(ranges)]
        for f in futures:
            f.result()
        self.sums += sums.sum(axis=0)
        return slot.stored[:rows]

    def _input(self, start: int, stop: int, turn: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as float32 (loaded ahead when foreseen); starts loading the
        next chunk into the other input buffer, whose rows were marked before these."""
        if self._loading is not None and self._loading[0] == (start, stop):
            w_t = self._loading[1].result()
        else:
            if self._loading is not None:  # not the chunk foreseen: let that load finish first
                self._loading[1].result()
            w_t = self._load(start, stop, turn)
        after = (stop, min(self.info.n_rows, 2 * stop - start))
        self._loading = (after, self.reads.submit(self._load, *after, turn ^ 1)) if after[0] < self.info.n_rows else None
        return w_t

    def _load(self, start: int, stop: int, turn: int) -> torch.Tensor:
        rows, info = stop - start, self.info
        if self._reader is None:
            self._reader = self.ckpt.row_reader(info.name, rows)
        buffer = self.buffers.rows("input", turn, rows, info.row_length)
        return self._reader.read_into(start, stop, buffer)  # type: ignore[return-value]

    def _mark_part(self, w_t: torch.Tensor, slot: _Slot, start: int, lo: int, hi: int, sums: np.ndarray) -> None:
        """Rows ``[lo, hi)`` of the chunk: marked, rounded to storage, and their sums."""
        info = self.info
        w_t = w_t[lo:hi]
        w = w_t.numpy()
        marked, stored, back = slot.marked[lo:hi], slot.stored[lo:hi], slot.back[lo:hi]
        mark_into(w_t, info.name, (info.n_rows, info.row_length), start + lo, self.key, self.amplitude, marked)
        if stored is not marked:
            stored.copy_(marked)  # round to nearest even, as converters do
            back.copy_(stored)
        scratch = slot.scratch[lo * info.row_length:hi * info.row_length]
        change_sums(w, back.numpy(), scratch.numpy(), sums)
        # Q8_0's step per block of 32 (amax / 127), the noise the change is compared with
        amax = torch.abs(w_t.reshape(-1), out=scratch).view(-1, Q8_BLOCK).amax(dim=1)
        sums[2] += float(amax.double().div_(127.0).square_().sum())
        sums[3] += amax.numel()

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None

    def change(self) -> TensorChange:
        n = self.info.n_elements
        sum_w2, sum_d2, sum_step2, n_blocks = self.sums
        q8 = math.sqrt(sum_step2 / n_blocks / 12.0) if n_blocks else float("nan")
        norm_w = math.sqrt(sum_w2)
        return TensorChange(
            self.info.name, n,
            math.sqrt(sum_d2) / norm_w if norm_w else 0.0,
            math.sqrt(sum_d2 / n) / q8 if q8 else float("nan"),
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
    progress: ProgressCallback | None = None,
    threads: int = 2,
) -> EmbedReport:
    """Write a marked copy of ``source`` to ``output`` and report the relative change;
    ``progress`` is told the source bytes consumed (task ``watermark embed``)."""
    if not (0 < amplitude < 1):
        raise EmbedError(f"amplitude {amplitude} must be in (0, 1) (relative to each row's std)")
    with open_checkpoint(source) as ckpt:
        report = EmbedReport(str(source), str(output), key.label, amplitude, ckpt.format)
        targets = _targets(ckpt, selector or default_selector, report)
        if not ckpt.format.startswith(("gguf", "safetensors", "hf")):
            raise EmbedError(f"{source}: cannot write {ckpt.format} checkpoints (GGUF and safetensors only)")
        meter = Meter(progress, "watermark embed", sum(info.n_bytes for info in ckpt.tensors.values()))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="provenance-embed")
        workers = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="provenance-embed-rows")
        reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="provenance-embed-read")
        try:
            buffers = _Buffers()
            markers = {name: _Marker(ckpt, ckpt.info(name), key, amplitude, pool, workers, max(1, threads), reads, buffers)
                       for name in ckpt.tensors if name in targets}
            with torch_threads(1):  # our threads split the rows; torch's own would only spin on a shared machine
                write_checkpoint(ckpt, output, replace=markers, progress=meter.advance)
        finally:  # on Ctrl-C too: the chunk being marked ahead is dropped, not waited for
            pool.shutdown(wait=False, cancel_futures=True)
            workers.shutdown(wait=False, cancel_futures=True)
            reads.shutdown(wait=False, cancel_futures=True)
        report.tensors = [marker.change() for marker in markers.values()]
    return report
