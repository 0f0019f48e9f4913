"""Read canonical float32 rows of one tensor into reused buffers.

The readers' ``read_rows`` allocate a fresh buffer per call; on this machine kind
allocation costs as much as the arithmetic, so the streamed comparison reads stored bytes
with ``preadv`` into one reused buffer and decodes them (torch: f16/bf16 casts, the
project's dequantization kernels) into a reused float32 buffer. Tensors whose rows are
permuted on read (HF q/k) or whose dtype has no fast path go through ``read_rows``.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from provenance.formats.base import Checkpoint, TensorInfo

_PLAIN_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class RowReader:
    """Canonical rows ``[start, stop)`` of one tensor as float32 torch tensors.

    The returned tensor is a view of an internal buffer, valid until the next call.
    """

    def __init__(self, ckpt: Checkpoint, info: TensorInfo, max_rows: int) -> None:
        self.ckpt, self.info = ckpt, info
        self.max_rows = max(1, max_rows)
        self._fd: int | None = None
        self._plain = _PLAIN_TORCH.get(info.dtype) if info.block_size == 1 else None
        self._ggml = info.ggml_type if info.quantized else None
        self.fast = info.qk_heads is None and (self._plain is not None or self._ggml is not None)
        self._raw = bytearray(self.max_rows * info.row_bytes) if self.fast else bytearray()
        self._out = torch.empty((self.max_rows, info.row_length), dtype=torch.float32)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read_raw(self, start: int, stop: int) -> memoryview:
        info = self.info
        n = (stop - start) * info.row_bytes
        if self._fd is None:
            self._fd = os.open(info.file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        view = memoryview(self._raw)[:n]
        got = os.preadv(self._fd, [view], info.offset + start * info.row_bytes)
        if got != n:
            raise OSError(f"{info.file}: short read of {info.name} ({got} of {n} bytes)")
        return view

    def raw_rows(self, start: int, stop: int) -> np.ndarray:
        """Stored bytes of canonical rows (GGUF tensors are stored in canonical order)."""
        return self.ckpt.raw_rows(self.info.name, start, stop)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if stop - start > self.max_rows:
            raise ValueError(f"chunk of {stop - start} rows exceeds {self.max_rows}")
        out = self._out[: stop - start]
        if not self.fast:
            out.copy_(torch.from_numpy(np.ascontiguousarray(self.ckpt.read_rows(self.info.name, start, stop))))
            return out
        raw = self._read_raw(start, stop)
        if self._plain is not None:
            src = torch.frombuffer(raw, dtype=self._plain) if len(raw) else torch.empty(0, dtype=self._plain)
            out.view(-1).copy_(src)
            return out
        from provenance.codecs import dequantize_torch

        raw_t = torch.frombuffer(raw, dtype=torch.uint8).view(stop - start, self.info.row_bytes)
        dequantize_torch(raw_t, int(self._ggml), out=out)  # type: ignore[arg-type]
        return out

    def gather(self, index: np.ndarray) -> torch.Tensor:
        """Arbitrary canonical rows ``index`` (fresh tensor), read as runs of consecutive rows."""
        index = np.asarray(index, dtype=np.int64)
        result = torch.empty((len(index), self.info.row_length), dtype=torch.float32)
        if len(index) == 0:
            return result
        order = np.argsort(index, kind="stable")
        sorted_idx = index[order]
        breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
        pos = 0
        for run in np.split(sorted_idx, breaks):
            lo = int(run[0])
            hi = int(run[-1]) + 1
            for a in range(lo, hi, self.max_rows):
                b = min(hi, a + self.max_rows)
                chunk = self.rows(a, b)
                dest = torch.from_numpy(order[pos: pos + (b - a)])
                result.index_copy_(0, dest, chunk)
                pos += b - a
        return result

    def read_all(self) -> torch.Tensor:
        """The whole tensor as a fresh ``(n_rows, row_length)`` float32 tensor."""
        info = self.info
        result = torch.empty((info.n_rows, info.row_length), dtype=torch.float32)
        for a in range(0, info.n_rows, self.max_rows):
            b = min(info.n_rows, a + self.max_rows)
            result[a:b].copy_(self.rows(a, b))
        return result


def rows_per_chunk(row_length: int, target_elems: int = 1 << 17) -> int:
    """Rows per streamed chunk: ~128K elements keeps the working set (two inputs, the
    d/s buffer) inside a 2 MiB L2 cache while per-op overhead stays small."""
    return max(1, target_elems // max(1, row_length))
