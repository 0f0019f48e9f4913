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

The marked rows are computed by one compiled pass per row (:func:`mark_store_rows`): the
row's standard deviation, the key generated in place (:mod:`.keygen`), ``w + a sigma k`` in
float32, rounded to the storage type, and the row's terms of the reported change; no float64
copy of anything larger than a row's sums (docs/watermark.md, "Embedding").

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

from provenance.codecs.native.floats import bits_float, float_bits, store_bf16, store_f16
from provenance.errors import ProvenanceError, input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.dtypes import torch_dtype
from provenance.formats.rows import RowReader
from provenance.formats.write import write_checkpoint
from provenance.jit import inline, kernel
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
#: :func:`mark_store_rows`'s code of each storage type
STORAGE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: parts of a chunk's rows per marking thread, taken in turn by whichever thread is free: a
#: fixed half each would leave one thread idle while the reading and writing threads
#: slow the other
PARTS_PER_THREAD = 4


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


@inline
def _mark_row(w: np.ndarray, words: np.ndarray, start: np.int64, amplitude: float, ones: np.ndarray,
              zero: np.ndarray, out: np.ndarray) -> None:
    """``out = w + float32(amplitude * sigma(w)) * key[start:]`` for one float32 row."""
    _, sigma = row_moments(w, ones, zero, out)
    fill_gaussian(words, start, out)
    scale = np.float32(amplitude * sigma)
    for c in range(w.shape[0]):
        out[c] = w[c] + scale * out[c]


@kernel
def mark_rows(w: np.ndarray, words: np.ndarray, first: np.int64, amplitude: float, out: np.ndarray) -> None:
    """``out = w + float32(amplitude * sigma_row(w)) * key`` (float32; the caller rounds to
    storage); ``first``: the key element of ``w[0, 0]``, ``words``: the key's generator words."""
    rows, cols = w.shape
    ones, zero = constant_rows(cols)
    for r in range(rows):
        _mark_row(w[r], words, first + r * cols, amplitude, ones, zero, out[r])


@inline
def _row_change(w: np.ndarray, diff: np.ndarray, block: int, out: np.ndarray) -> None:
    """A row's terms of :class:`TensorChange`: ``out = (sum w^2, sum diff^2, sum over its
    blocks of ``block`` (Q8_0's 32) of (amax|w| / 127)^2)``. A block's maximum compares the
    bits of ``|w|`` as integers (ordered as the floats, NaN above inf: a NaN block stays
    NaN, as ``torch.amax``), a reduction LLVM vectorizes, where a float ``max`` is not;
    ``block`` is a run-time value so that the loop is vectorized, not unrolled into
    branches (0.2 against 0.9 ns per weight)."""
    n = w.shape[0]
    out[0] = dot64(w, w)
    out[1] = dot64(diff, diff)
    steps = 0.0
    for b in range(0, n, block):
        v = w[b:min(n, b + block)]
        top = np.int32(0)
        for j in range(v.shape[0]):
            a = np.int32(np.int64(float_bits(v[j])) & 0x7FFFFFFF)
            top = a if a > top else top
        step = np.float64(bits_float(np.uint32(top))) / 127.0
        steps += step * step
    out[2] = steps


@inline
def _store_row(w: np.ndarray, marked: np.ndarray, storage: int, bits: np.ndarray, stored: np.ndarray,
               diff: np.ndarray, block: int, change: np.ndarray) -> None:
    """One marked row as stored: ``storage`` 1 (f16) or 2 (bf16) its uint16 ``bits``,
    rounded to nearest even (:func:`store_f16`, :func:`store_bf16`), 0 (f32) its float32
    values in ``stored`` (the same array as ``marked`` when marked in place); the stored
    change in ``diff`` (may be ``marked``) and its terms in ``change`` (:func:`_row_change`)."""
    if storage == 1:
        for c in range(w.shape[0]):
            h, back = store_f16(marked[c])
            bits[c] = np.uint16(h)
            diff[c] = back - w[c]
    elif storage == 2:
        for c in range(w.shape[0]):
            h, back = store_bf16(marked[c])
            bits[c] = np.uint16(h)
            diff[c] = back - w[c]
    else:
        for c in range(w.shape[0]):
            v = marked[c]
            stored[c] = v
            diff[c] = v - w[c]
    _row_change(w, diff, block, change)


@kernel
def mark_store_rows(w: np.ndarray, words: np.ndarray, first: np.int64, amplitude: float, storage: int,
                    bits: np.ndarray, stored: np.ndarray, block: int, change: np.ndarray) -> None:
    """The marked rows of ``w`` (:func:`mark_rows`) as stored (:func:`_store_row`: ``bits``
    for 16-bit storage, ``stored`` float32 rows for F32, the other one rows of width 0), each row's
    change terms in ``change[r]``: one pass per row while it is in cache (torch's two casts,
    the change sums and the block maxima as passes of their own cost as much again as the
    marking: docs/watermark.md, "Embedding")."""
    rows, cols = w.shape
    ones, zero = constant_rows(cols)
    row, diff = np.empty(cols, dtype=np.float32), np.empty(cols, dtype=np.float32)
    for r in range(rows):
        marked = stored[r] if storage == 0 else row
        _mark_row(w[r], words, first + r * cols, amplitude, ones, zero, marked)
        _store_row(w[r], marked, storage, bits[r], marked, diff, block, change[r])


@kernel
def store_marked_rows(w: np.ndarray, marked: np.ndarray, storage: int, bits: np.ndarray, stored: np.ndarray,
                      block: int, change: np.ndarray) -> None:
    """:func:`mark_store_rows` for rows already marked (a key given as arrays)."""
    diff = np.empty(w.shape[1], dtype=np.float32)
    for r in range(w.shape[0]):
        _store_row(w[r], marked[r], storage, bits[r], stored[r], diff, block, change[r])


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
    """One chunk's buffers: the marked rows in storage type, those as the kernels write
    them (``bits``: uint16 for F16/BF16, ``values``: float32 for F32; the other as many
    rows of width 0), and each row's change terms."""

    def __init__(self, buffers: _Buffers, turn: int, rows: int, cols: int, dtype: torch.dtype) -> None:
        self.storage = STORAGE_CODES[dtype]
        self.stored = buffers.rows("stored", turn, rows, cols, dtype)
        wide = self.storage == 0
        self.values = self.stored.numpy() if wide else np.zeros((rows, 0), np.float32)
        self.bits = np.zeros((rows, 0), np.uint16) if wide else self.stored.view(torch.int16).numpy().view(np.uint16)
        self.change = buffers.rows("change", turn, rows, 3, torch.float64).numpy()


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
        # each row's terms are summed in row order below, so neither this split nor the
        # chunk size changes a bit of the report
        ranges = row_ranges(rows, self.threads * PARTS_PER_THREAD)
        futures = [self.workers.submit(self._mark_part, w_t, slot, start, lo, hi) for lo, hi in ranges]
        for f in futures:
            f.result()
        # a running sum of each term (cumsum adds in order along the axis), carried across chunks
        self.sums[:3] = np.cumsum(np.concatenate((self.sums[None, :3], slot.change[:rows])), axis=0)[-1]
        self.sums[3] += rows * -(-self.info.row_length // Q8_BLOCK)
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

    def _mark_part(self, w_t: torch.Tensor, slot: _Slot, start: int, lo: int, hi: int) -> None:
        """Rows ``[lo, hi)`` of the chunk: marked, rounded to storage, and their change terms."""
        info = self.info
        w = w_t[lo:hi].numpy()
        bits, values, change = slot.bits[lo:hi], slot.values[lo:hi], slot.change[lo:hi]
        words = getattr(self.key, "words", None)
        if words is not None:
            mark_store_rows(w, words(info.name), np.int64((start + lo) * info.row_length), self.amplitude, slot.storage,
                            bits, values, Q8_BLOCK, change)
            return
        marked = torch.empty(w.shape, dtype=torch.float32)  # a key given as arrays (tests, small keys)
        mark_into(w_t[lo:hi], info.name, (info.n_rows, info.row_length), start + lo, self.key, self.amplitude, marked)
        store_marked_rows(w, marked.numpy(), slot.storage, bits, values, Q8_BLOCK, change)

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
