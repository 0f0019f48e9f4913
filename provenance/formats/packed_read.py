"""Canonical float32 rows of a packed quantized weight, streamed through the reader interface.

:class:`PackedRowReader` is the :class:`provenance.formats.rows.RowReader` that
:meth:`provenance.formats.base.Checkpoint.row_reader` hands out for a tensor with
``TensorInfo.packing`` (GPTQ, AWQ, compressed-tensors, bitsandbytes, MLX): the same
``read`` / ``read_into`` / ``gather`` / ``read_all``, rows decoded by the compiled kernels
of :mod:`provenance.codecs.packed` into the reader's reused buffer or the caller's, plus
:meth:`PackedRowReader.cells`, the grid cell of every stored code (the grid-consistency
test). HF q/k rows are permuted on read like every other tensor's.

Each chunk reads only the stored bytes its rows need, into one reused buffer per part:
for row-major layouts (compressed-tensors, bitsandbytes, MLX) a contiguous span; for the
layouts packed along the output dimension's columns (GPTQ ``qweight (in/pf, out)``, AWQ
``qweight (in, out/8)``) a band of columns of every stored row, one read per stored row,
read ahead up to :data:`BAND_BYTES` so that a streamed pass reads each byte once in
large reads. Memory stays bounded by the chunk and the band, never the tensor. Values
that steer a loop (``g_idx``) are checked against the validated shapes before use.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from provenance.codecs.packed import awq, bnb, compressed, gptq, mlx
from provenance.codecs.packed.grid import PackedRows
from provenance.errors import MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats.base import ReadObserver, clip_rows
from provenance.formats.dtypes import element_bytes, torch_dtype
from provenance.formats.packed import PackedTensor, Part
from provenance.formats.rows import RowReader

if TYPE_CHECKING:
    from provenance.formats.base import Checkpoint

BAND_BYTES = 8 << 20
"""Read-ahead of a column band (GPTQ/AWQ words, scales and zeros): at 4096 inputs a
4-bit ``qweight`` band of 8 MiB covers 4096 outputs, so a 7B attention matrix is read in
one band of 512 reads of 16 KiB."""

_STATE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def part_dtype(dtype: str) -> torch.dtype:
    """The torch dtype a part is read as (fp8 weights as their uint8 codes)."""
    if dtype.startswith("F8"):
        return torch.uint8
    found = torch_dtype(dtype)
    if found is None:
        raise ValueError(f"no torch dtype for a {dtype} part")
    return found


class PartBuffer:
    """One stored part read into a reused buffer: rows ``[r0, r1)``, or a band of columns
    of every row (``shape[0]`` rows of ``prod(shape[1:])`` columns; a 0-D/1-D part is one
    column)."""

    def __init__(self, ckpt: Checkpoint, part: Part, band_columns: int, observe: ReadObserver | None) -> None:
        self.ckpt, self.part, self.observe = ckpt, part, observe
        self.dtype = part_dtype(part.dtype)
        self.size = int(element_bytes(part.dtype))
        self.n_rows = part.shape[0] if part.shape else 1
        self.n_cols = math.prod(part.shape[1:]) if len(part.shape) > 1 else 1
        self.band_columns = max(1, min(self.n_cols, band_columns))
        self._buffer = bytearray()
        self._held: tuple[str, int, int] | None = None
        self._view = torch.empty(0, dtype=self.dtype)

    def _reserve(self, n_bytes: int) -> memoryview:
        if len(self._buffer) < n_bytes:
            self._buffer, self._held = bytearray(n_bytes), None
        return memoryview(self._buffer)

    def _pread(self, target: memoryview, offset: int) -> None:
        self.ckpt.pread_into(self.part.file, target, offset)
        if self.observe is not None:
            self.observe(self.part.file, offset, len(target))

    def _typed(self, n_bytes: int, shape: tuple[int, int]) -> torch.Tensor:
        if n_bytes == 0:
            return torch.empty(shape, dtype=self.dtype)
        return torch.frombuffer(self._buffer, dtype=self.dtype, count=n_bytes // self.size).view(shape)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """Rows ``[r0, r1)``, ``(r1 - r0, n_cols)``: a view valid until the next call."""
        if not 0 <= r0 <= r1 <= self.n_rows:
            raise IndexError(f"{self.part.name}: rows [{r0}, {r1}) outside {self.n_rows}")
        row_bytes = self.n_cols * self.size
        n = (r1 - r0) * row_bytes
        if self._held != ("rows", r0, r1):
            target = self._reserve(n)
            if n:
                self._held = None
                self._pread(target[:n], self.part.offset + r0 * row_bytes)
            self._held = ("rows", r0, r1)
            self._view = self._typed(n, (r1 - r0, self.n_cols))
        return self._view

    def whole(self) -> torch.Tensor:
        """Every element, flat (small parts: maps, codebooks, per-row scales)."""
        return self.rows(0, self.n_rows).reshape(-1)

    def band(self, c0: int, c1: int) -> torch.Tensor:
        """Columns ``[c0, c1)`` of every row, ``(n_rows, c1 - c0)``: a strided view of the held
        band, which is read (one read per stored row, ahead up to ``band_columns``) only
        when it does not cover them."""
        if not 0 <= c0 <= c1 <= self.n_cols:
            raise IndexError(f"{self.part.name}: columns [{c0}, {c1}) outside {self.n_cols}")
        held = self._held
        if held is None or held[0] != "band" or not held[1] <= c0 <= c1 <= held[2]:
            b0, b1 = c0, min(self.n_cols, max(c1, c0 + self.band_columns))
            width = (b1 - b0) * self.size
            target = self._reserve(self.n_rows * width)
            self._held = None
            if width:
                row_bytes = self.n_cols * self.size
                for r in range(self.n_rows):
                    self._pread(target[r * width:(r + 1) * width], self.part.offset + r * row_bytes + b0 * self.size)
            self._held = held = ("band", b0, b1)
            self._view = self._typed(self.n_rows * width, (self.n_rows, b1 - b0))
        return self._view[:, c0 - held[1]: c1 - held[1]]

    def release(self) -> None:
        self._buffer, self._held, self._view = bytearray(), None, torch.empty(0, dtype=self.dtype)


Args = tuple[Any, ...]
_VALUES: dict[str, Callable[..., torch.Tensor]] = {
    "gptq": gptq.gptq_into, "awq": awq.awq_into, "ct-pack": compressed.packed_int_into, "ct-int": compressed.int_into,
    "ct-fp8": compressed.fp8_into, "bnb-4bit": bnb.nf4_into, "bnb-int8": bnb.int8_into, "mlx": mlx.mlx_into,
}
"""Each layout's compiled decoder: ``fn(*args, out)``."""
_GRIDS: dict[str, Callable[[Args, int, int], PackedRows]] = {
    "gptq": lambda a, n, width: gptq.gptq_rows(*a),
    "awq": lambda a, n, width: awq.awq_rows(*a, n),
    "ct-pack": lambda a, n, width: compressed.packed_int_rows(*a),
    "ct-int": lambda a, n, width: compressed.int_rows(*a),
    "ct-fp8": lambda a, n, width: compressed.fp8_rows(*a),
    "bnb-4bit": lambda a, n, width: bnb.nf4_rows(*a[:5], width, a[5]),
    "bnb-int8": lambda a, n, width: bnb.int8_rows(*a),
    "mlx": lambda a, n, width: mlx.mlx_rows(*a),
}
"""Each layout's codes and grid (torch): ``fn(args, n_rows, row_length)``, same ``args``."""


class PackedRowReader(RowReader):
    """Canonical float32 rows of one packed weight (see the module docstring)."""

    def __init__(self, ckpt: Checkpoint, name: str, max_rows: int | None = None,
                 observe: ReadObserver | None = None) -> None:
        super().__init__(ckpt, name, max_rows)
        packing = self.info.packing
        assert packing is not None, name
        self.packing: PackedTensor = packing
        # a streamed pass reads bands ahead; a reader of single rows (sampling) reads what it needs
        ahead = self.max_rows > 1
        self._parts = {role: PartBuffer(ckpt, part, BAND_BYTES // max(1, part.shape[0] * int(element_bytes(part.dtype)))
                                        if ahead and len(part.shape) > 1 else 1, observe)
                       for role, part in packing.parts.items()}
        self._group_map: torch.Tensor | None = None
        self._scratch = torch.empty((0, self.info.row_length), dtype=torch.float32)

    def close(self) -> None:
        super().close()
        for part in self._parts.values():
            part.release()
        self._scratch = torch.empty((0, self.info.row_length), dtype=torch.float32)

    def raw(self, start: int, stop: int) -> np.ndarray:
        raise UnsupportedCheckpoint(self.info.file, f"{self.info.name} is a {self.info.dtype} weight made of several "
                                    "stored tensors: it has no stored rows", field=self.info.stored_name)

    # ----- canonical rows ------------------------------------------------------------------
    def _stored_span(self, start: int, stop: int) -> tuple[int, int, np.ndarray | None]:
        """Stored rows ``[lo, hi)`` holding canonical rows ``[start, stop)``, and where each
        canonical row is among them (None: the same rows in the same order)."""
        if self._order is None:
            return start, stop, None
        order = self._order[start:stop]
        lo = int(order.min())
        return lo, int(order.max()) + 1, order - lo

    def _decode(self, start: int, stop: int, target: torch.Tensor) -> torch.Tensor:
        if stop == start:
            return target
        lo, hi, index = self._stored_span(start, stop)
        if index is None:
            _VALUES[self.packing.layout](*self._args(lo, hi), target)
            return target
        # a q/k chunk spans whole heads of stored rows, at most two heads more than asked
        if self._scratch.shape[0] < hi - lo:
            self._scratch = torch.empty((hi - lo, self.info.row_length), dtype=torch.float32)
        stored = _VALUES[self.packing.layout](*self._args(lo, hi), self._scratch[: hi - lo])
        torch.index_select(stored, 0, torch.from_numpy(index), out=target)
        return target

    def grid(self, start: int, stop: int) -> PackedRows:
        """Codes and grid of canonical rows ``[start, stop)`` (torch, fresh tensors)."""
        start, stop = clip_rows(self.info, start, stop)
        lo, hi, index = self._stored_span(start, stop)
        rows = _GRIDS[self.packing.layout](self._args(lo, hi), hi - lo, self.info.row_length)
        return rows if index is None else rows.select_rows(torch.from_numpy(index))

    def cells(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lo, hi, step)`` float32 per weight of canonical rows ``[start, stop)``: the source
        values that round to each stored code (:meth:`PackedRows.cells`)."""
        return self.grid(start, stop).cells()

    # ----- the parts each layout needs for stored rows [a, b) ------------------------------
    def _groups(self, role: str, n_groups: int) -> torch.Tensor:
        """Each input column's group: the stored ``g_idx`` (act-order), checked once against
        the ``n_groups`` stored groups, else ``i // group_size``."""
        if self._group_map is None:
            t = self.packing
            part = self._parts.get(role)
            if part is None:
                self._group_map = torch.arange(t.shape[1], dtype=torch.int64) // t.group_size
            else:
                g = part.whole().to(torch.int64)
                if g.numel() and (int(g.min()) < 0 or int(g.max()) >= n_groups):
                    raise MalformedCheckpoint(part.part.file, f"{part.part.name!r} holds group {int(g.min())}.."
                                              f"{int(g.max())}, outside the {n_groups} stored groups",
                                              field=part.part.name, offset=part.part.offset)
                self._group_map = g
        return self._group_map

    def _args(self, a: int, b: int) -> Args:
        layout = self.packing.layout
        if layout == "gptq":
            return self._gptq(a, b)
        if layout == "awq":
            return self._awq(a, b)
        if layout.startswith("ct-"):
            return self._compressed(a, b)
        if layout == "bnb-4bit":
            return self._bnb4(a, b)
        p = self._parts
        if layout == "bnb-int8":
            return p["weight"].rows(a, b), p["SCB"].rows(a, b).reshape(-1)
        t = self.packing
        return p["weight"].rows(a, b), p["scales"].rows(a, b), p["biases"].rows(a, b), t.bits, t.group_size

    def _gptq(self, a: int, b: int) -> Args:
        t, p = self.packing, self._parts
        pf = 32 // t.bits
        z0, z1 = a // pf, -(-b // pf)
        groups = self._groups("g_idx", t.params["n_groups"])
        return (p["qweight"].band(a, b), p["qzeros"].band(z0, z1), a - z0 * pf, p["scales"].band(a, b), groups, t.bits,
                t.params["zero_offset"])

    def _awq(self, a: int, b: int) -> Args:
        t, p = self.packing, self._parts
        w0, w1 = a // 8, -(-b // 8)
        return p["qweight"].band(w0, w1), p["qzeros"].band(w0, w1), p["scales"].band(8 * w0, 8 * w1), t.group_size, a - 8 * w0

    def _scale_rows(self, role: str, a: int, b: int) -> torch.Tensor:
        part = self._parts[role]
        return part.whole() if len(part.part.shape) < 2 else part.rows(a, b)

    def _compressed(self, a: int, b: int) -> Args:
        t, p = self.packing, self._parts
        scale_part = p["weight_scale"].part
        groups = self._groups("weight_g_idx", scale_part.shape[-1] if len(scale_part.shape) == 2 else 1)
        scale = self._scale_rows("weight_scale", a, b)
        if t.layout == "ct-fp8":
            return p["weight"].rows(a, b), scale, groups
        if t.layout == "ct-int":
            zero = self._scale_rows("weight_zero_point", a, b).to(torch.float32) if "weight_zero_point" in p else None
            return p["weight"].rows(a, b), scale, zero, groups, 8
        zero_words, zero_row = None, 0
        if "weight_zero_point" in p:  # packed along the outputs: 32 outputs per `bits` words
            g0 = a // 32
            w0, w1 = g0 * t.bits, min(p["weight_zero_point"].n_rows, -(-b // 32) * t.bits)
            zero_words, zero_row = p["weight_zero_point"].rows(w0, w1), a - 32 * g0
        return p["weight_packed"].rows(a, b), t.shape[1], t.bits, scale, zero_words, zero_row, groups

    def _bnb4(self, a: int, b: int) -> Args:
        t, p, prm = self.packing, self._parts, self.packing.params
        n_in, bs = t.shape[1], t.group_size
        e0, e1 = a * n_in, b * n_in  # elements; rows are whole bytes (even lengths, checked at open)
        b0, b1 = e0 // bs, -(-e1 // bs)
        packed = p["weight"].rows(e0 // 2, e1 // 2).reshape(-1)
        absmax = p["absmax"].rows(b0, b1).reshape(-1)
        if "nested_blocksize" in prm:
            absmax = bnb.nested_absmax(absmax, p["nested_quant_map"].whole(), p["nested_absmax"].whole(),
                                       prm["nested_blocksize"], prm["nested_offset"], b0)
        return packed, absmax, p["quant_map"].whole(), bs, e0 - b0 * bs, _STATE_DTYPES[prm["dtype"]]
