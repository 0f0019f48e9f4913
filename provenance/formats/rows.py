"""Stored bytes -> canonical float32 rows, into buffers the caller reuses.

This is the one decoder of the package (every reader's ``read_rows`` ends here):

* block-quantized ggml types: :func:`provenance.codecs.dequantize_torch` (compiled CPU
  kernels, torch kernels elsewhere), straight into the output buffer;
* plain types (``F32``, ``F16``, ``BF16``, fp8, integers, ...): one torch cast from the
  stored bytes (numpy's fp16 conversion is ~8x slower than torch's here);
* packed fp4 (safetensors ``F4``): a lookup table.

:class:`RowReader` streams one tensor: it reads stored bytes with ``preadv`` into one
reused byte buffer and decodes them into one reused float32 buffer, because on the
target machine allocating a fresh output per chunk costs as much as the arithmetic
(``docs/lineage.md``, Performance). HF q/k rows are permuted as they are read (a
scattering ``preadv`` puts each stored row at its canonical place), so every caller sees
the canonical layout described in :mod:`provenance.formats.base`.
"""
from __future__ import annotations

import numpy as np
import torch

from provenance.errors import UnsupportedCheckpoint
from provenance.formats.base import Checkpoint, TensorInfo, clip_rows
from provenance.formats.dtypes import decode_fp4, torch_dtype
from provenance.names.qk_permute import llama_qk_row_order

RowBuffer = torch.Tensor | np.ndarray
"""A caller's output buffer: contiguous, writable float32 ``(rows, row_length)``."""

_IOV_MAX = 1024
"""Buffers one ``preadv`` may scatter into (POSIX ``IOV_MAX`` on Linux)."""

READAHEAD_BYTES = 32 << 20
"""How far past the chunk just read a reader asks the kernel to read ahead
(:meth:`provenance.formats.base.Checkpoint.prefetch`): the disk then streams while the
chunk is decoded and analysed (a cold read at ~1.5 GB/s otherwise waits for every chunk;
32 MB keeps ~20 ms of disk queued and is a fixed amount of page cache, not a share of the model)."""


def check_decodable(info: TensorInfo) -> None:
    """Refuse, as an input problem naming the tensor, a storage type whose values no codec
    here decodes (fp6, a ggml intermediate type such as Q8_K): its bytes can still be read
    raw and hashed, but asking for float rows is :class:`UnsupportedCheckpoint`, not a crash.
    A packed weight (GPTQ, NF4, MLX ...) was validated when opened; its layout's codec decodes it."""
    if info.packing is not None:
        return
    if info.ggml_type is not None and info.block_size > 1:
        from provenance.codecs.registry import coverage

        decodable = coverage(info.ggml_type) != "unsupported"
    else:
        decodable = torch_dtype(info.dtype) is not None or info.dtype == "F4"
    if not decodable:
        raise UnsupportedCheckpoint(info.file, f"{info.dtype} values cannot be decoded to float here "
                                    "(their stored bytes can be read and hashed)", field=info.stored_name, offset=info.offset)


def decode_into(info: TensorInfo, raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Decode ``(rows, k * block_bytes)`` stored bytes of ``info`` into float32 ``out``
    ``(rows, k * block_size)`` (whole blocks; complex values: their real part)."""
    check_decodable(info)
    if info.ggml_type is not None and info.block_size > 1:
        from provenance.codecs import dequantize_torch

        return dequantize_torch(raw, info.ggml_type, out=out)
    plain = torch_dtype(info.dtype)
    if plain is not None:
        if raw.numel():
            try:
                values = raw.reshape(-1).view(plain)
            except RuntimeError:  # bytes not aligned to the element size: copy them first
                values = raw.reshape(-1).clone().view(plain)
            out.view(-1).copy_(values.real if values.is_complex() else values)
        return out
    out.copy_(torch.from_numpy(decode_fp4(raw.numpy(), out.shape[1])))  # F4, the one table-decoded type
    return out


def as_row_buffer(out: RowBuffer, rows: int, row_length: int) -> torch.Tensor:
    """A torch view of a caller's buffer, after checking that rows can be decoded into it."""
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("the output buffer is read-only")
    view = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
    if (view.dtype != torch.float32 or tuple(view.shape) != (rows, row_length) or not view.is_contiguous()
            or view.device.type != "cpu"):
        raise ValueError(f"the output buffer must be contiguous CPU float32 of shape {(rows, row_length)}, "
                         f"got {view.dtype} {tuple(view.shape)}")
    return view


class RowReader:
    """Canonical float32 rows of one tensor, decoded into reused buffers.

    ``read`` returns a view of the reader's own buffer, valid until the next call;
    ``read_into`` fills the caller's (numpy or torch). Buffers grow to the largest chunk
    asked for and are then reused. Threads may share the checkpoint, each with its own
    reader.
    """

    def __init__(self, ckpt: Checkpoint, name: str, max_rows: int | None = None) -> None:
        self.ckpt = ckpt
        self.info = ckpt.info(name)
        check_decodable(self.info)
        self.max_rows = max(1, min(self.info.n_rows, max_rows if max_rows is not None else self.info.n_rows))
        self._raw = bytearray()
        self._raw_t = torch.empty(0, dtype=torch.uint8)
        self._held: tuple[int, int] | None = None
        """Stored rows whose bytes the byte buffer holds now."""
        self._ahead = 0
        """Tensor-relative byte offset up to which the kernel was asked to read ahead."""
        self._last_end = -1
        """Tensor-relative byte offset where the last read ended."""
        self._out = torch.empty((0, self.info.row_length), dtype=torch.float32)
        self._order = (llama_qk_row_order(self.info.n_rows, self.info.qk_heads)
                       if self.info.qk_heads is not None else None)
        # The two hot paths, resolved once (per-chunk lookups cost ~3% at 1 MB chunks):
        # plain types are one cast from a typed view of the byte buffer, block-quantized
        # types one call of the codecs' dequantizer.
        plain = torch_dtype(self.info.dtype) if self.info.block_size == 1 else None
        self._plain = plain if plain is not None and not plain.is_complex else None
        self._raw_plain = torch.empty(0, dtype=self._plain or torch.uint8)
        self._dequantize = None
        if self.info.ggml_type is not None and self.info.block_size > 1:
            from provenance.codecs import dequantize_torch

            self._dequantize = dequantize_torch

    def close(self) -> None:
        """Release the buffers (the file descriptors belong to the checkpoint)."""
        self._raw, self._held = bytearray(), None
        self._raw_t = torch.empty(0, dtype=torch.uint8)
        self._raw_plain = torch.empty(0, dtype=self._plain or torch.uint8)

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- stored bytes ----------------------------------------------------------------
    def _reserve(self, n: int) -> None:
        if len(self._raw) < n:
            self._raw = bytearray(max(n, self.max_rows * self.info.row_bytes))
            self._raw_t = torch.frombuffer(self._raw, dtype=torch.uint8)
            if self._plain is not None:
                self._raw_plain = self._raw_t.view(self._plain)
            self._held = None

    def _fill(self, lo: int, hi: int) -> int:
        """Make the byte buffer hold stored rows ``[lo, hi)``; returns their byte count."""
        info = self.info
        n = (hi - lo) * info.row_bytes
        self._reserve(n)
        if n and self._held != (lo, hi, False):
            self._held = None
            self.ckpt.pread_into(info.file, memoryview(self._raw)[:n], info.offset + lo * info.row_bytes)
            self._held = (lo, hi, False)
            self._read_ahead(lo * info.row_bytes, hi * info.row_bytes)
        return n

    def _read_ahead(self, start: int, end: int) -> None:
        """Keep ``READAHEAD_BYTES`` past tensor byte ``end`` queued while the tensor is read in
        order (this read began where the last one ended; a sample of a few rows, or a gather,
        asks for nothing more than it reads), asking again only once half of the window has
        been consumed (one ``fadvise`` per ~16 MB read)."""
        sequential, self._last_end = start == self._last_end and start > 0, end
        if not sequential or self._ahead - end > READAHEAD_BYTES // 2:
            return
        stop = min(self.info.n_bytes, end + READAHEAD_BYTES)
        start = max(end, self._ahead)
        if stop > start:
            self.ckpt.prefetch(self.info.file, self.info.offset + start, stop - start)
        self._ahead = stop

    def _fill_canonical(self, start: int, stop: int) -> int:
        """Make the byte buffer hold the stored bytes of canonical rows ``[start, stop)`` in
        canonical order: each run of consecutive stored rows is one scattering ``preadv``
        (a whole-head chunk is one run; a partial head adds two per end), so permuted rows
        cost no scratch buffer and no second copy."""
        info, order = self.info, self._order
        assert order is not None
        row_bytes = info.row_bytes
        n = (stop - start) * row_bytes
        self._reserve(n)
        if not n or self._held == (start, stop, True):
            return n
        self._held = None
        stored = order[start:stop]
        by_stored = np.argsort(stored, kind="stable")  # canonical positions, in stored order
        first = stored[by_stored]
        view = memoryview(self._raw)
        breaks = np.flatnonzero(np.diff(first) != 1) + 1
        for run in np.split(np.arange(len(first)), breaks):
            for piece in np.array_split(run, -(-len(run) // _IOV_MAX)):
                targets = [view[p * row_bytes:(p + 1) * row_bytes] for p in by_stored[piece].tolist()]
                self.ckpt.pread_into(info.file, targets, info.offset + int(first[piece[0]]) * row_bytes)
        self._held = (start, stop, True)
        return n

    def _stored(self, lo: int, hi: int) -> torch.Tensor:
        """Stored rows ``[lo, hi)`` as a uint8 ``(rows, row_bytes)`` view of the byte buffer."""
        n = self._fill(lo, hi)
        if n == 0:
            return torch.empty((hi - lo, self.info.row_bytes), dtype=torch.uint8)
        return self._raw_t[:n].view(hi - lo, self.info.row_bytes)

    def raw(self, start: int, stop: int) -> np.ndarray:
        """Stored bytes of stored rows ``[start, stop)`` (no q/k permutation: the bytes whose
        quantization grid the quant module reads), a view valid until the next call. Right
        after ``read(start, stop)`` of an unpermuted tensor this costs no second read."""
        start, stop = clip_rows(self.info, start, stop)
        return self._stored(start, stop).numpy()

    # ----- canonical float32 rows ------------------------------------------------------
    def read(self, start: int, stop: int) -> torch.Tensor:
        """Canonical rows ``[start, stop)`` as float32 ``(rows, row_length)``: a view of the
        reader's own buffer, valid until the next call."""
        start, stop = clip_rows(self.info, start, stop)
        if self._out.shape[0] < stop - start:
            self._out = torch.empty((max(stop - start, self.max_rows), self.info.row_length), dtype=torch.float32)
        return self._decode(start, stop, self._out[: stop - start])

    def read_into(self, start: int, stop: int, out: RowBuffer) -> RowBuffer:
        """Canonical rows ``[start, stop)`` decoded into the caller's buffer (numpy or torch,
        contiguous float32 ``(rows, row_length)``), which is returned."""
        start, stop = clip_rows(self.info, start, stop)
        self._decode(start, stop, as_row_buffer(out, stop - start, self.info.row_length))
        return out

    def _decode(self, start: int, stop: int, target: torch.Tensor) -> torch.Tensor:
        # Canonical row r is stored row order[r] (HF q/k): the bytes are read in canonical order.
        n = self._fill(start, stop) if self._order is None else self._fill_canonical(start, stop)
        if n == 0:
            return target
        if self._plain is not None:
            target.view(-1).copy_(self._raw_plain[: n // self._raw_plain.element_size()])
            return target
        raw = self._raw_t[:n].view(stop - start, self.info.row_bytes)
        if self._dequantize is not None:
            return self._dequantize(raw, self.info.ggml_type, out=target)
        return decode_into(self.info, raw, target)

    def gather(self, index: np.ndarray, out: RowBuffer | None = None) -> RowBuffer:
        """Arbitrary canonical rows ``index`` (a fresh tensor unless ``out`` is given), read as
        runs of consecutive rows, at most ``max_rows`` at a time."""
        index = np.asarray(index, dtype=np.int64)
        result = (torch.empty((len(index), self.info.row_length), dtype=torch.float32) if out is None
                  else as_row_buffer(out, len(index), self.info.row_length))
        if len(index) == 0:
            return result if out is None else out
        first = int(index[0])
        if index[-1] - first == len(index) - 1 and np.array_equal(index, np.arange(first, first + len(index))):
            # one run in order (an unpermuted frame): decoded straight into place, no index copy
            for a in range(0, len(index), self.max_rows):
                b = min(len(index), a + self.max_rows)
                self.read_into(first + a, first + b, result[a:b])
            return result if out is None else out
        order = np.argsort(index, kind="stable")
        sorted_idx = index[order]
        breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
        pos = 0
        for run in np.split(sorted_idx, breaks):
            lo, hi = int(run[0]), int(run[-1]) + 1
            for a in range(lo, hi, self.max_rows):
                b = min(hi, a + self.max_rows)
                chunk = self.read(a, b)
                result.index_copy_(0, torch.from_numpy(order[pos: pos + (b - a)]), chunk)
                pos += b - a
        return result if out is None else out

    def read_all(self) -> torch.Tensor:
        """The whole tensor as a fresh ``(n_rows, row_length)`` float32 tensor, in chunks."""
        info = self.info
        result = torch.empty((info.n_rows, info.row_length), dtype=torch.float32)
        for a in range(0, info.n_rows, self.max_rows):
            self.read_into(a, min(info.n_rows, a + self.max_rows), result[a: a + self.max_rows])
        return result
