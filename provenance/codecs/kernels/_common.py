"""Shared pieces of the torch dequantization kernels.

Every kernel decodes a chunk of stored blocks into three things: per-weight *levels*
(small exact integers, or exact binary fractions for IQ1), a per-sub-block *scale*,
and optionally a per-sub-block *offset*. The value is then ``scale * level (+ offset)``
computed in float32 with exactly one rounding for the product and one for the sum,
which is the operation order of gguf-py's numpy kernels (and of ggml's reference
C code), so the results are bit-identical to ``gguf.quants.dequantize``.

Kernels use only torch ops on a uint8 tensor, so they run unchanged on CUDA.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Decoded:
    """One chunk of blocks decoded to levels and scales (see module docstring)."""

    levels: torch.Tensor
    """``(n_blocks, n_sub, ...)``, int8/uint8 or float32, exact; its *logical* order
    (it may be a strided view) is the weights' order within the block."""
    scale: torch.Tensor
    """float32, one per sub-block, shaped to broadcast against ``levels``."""
    offset: torch.Tensor | None = None
    """Like ``scale``, or None. Added (or subtracted) after the product."""
    subtract_offset: bool = False
    """True when the stored arithmetic is ``scale*level - m`` (K-quant mins): ``offset``
    then holds ``m`` and is subtracted; bit-identical to adding ``-m``."""


class Workspace:
    """Reusable scratch buffers keyed by name, grown on demand, one set per device.

    Allocating fresh temporaries for every chunk page-faults heavily on the target
    machines (see DESIGN.md, performance facts), so chunks share these buffers.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        key = (name, dtype)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(max(n, 1), dtype=dtype, device=self.device)
            self._bufs[key] = buf
        return buf[:n].view(shape)


_local = threading.local()


def workspace(device: torch.device) -> Workspace:
    """The calling thread's workspace for ``device`` (threads never share buffers)."""
    cache: dict[torch.device, Workspace] | None = getattr(_local, "ws", None)
    if cache is None:
        cache = _local.ws = {}
    ws = cache.get(device)
    if ws is None:
        ws = cache[device] = Workspace(device)
    return ws


_WIDTHS = ((8, torch.int64), (4, torch.int32), (2, torch.int16))


def wide_view(blocks: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Bytes ``start:stop`` of every block as the widest integer dtype the alignment
    allows (a strided view, no copy); uint8 when nothing wider fits.

    Strided torch ops cost about the same per *element* whatever its width, so moving
    8 bytes at a time is several times faster than moving one.
    """
    for width, dtype in _WIDTHS:
        if blocks.shape[1] % width == 0 and start % width == 0 and stop % width == 0 and blocks.data_ptr() % width == 0:
            try:
                return blocks.view(dtype)[:, start // width:stop // width]
            except RuntimeError:
                continue
    return blocks[:, start:stop]


def field(blocks: torch.Tensor, start: int, stop: int, ws: Workspace, name: str) -> torch.Tensor:
    """Bytes ``start:stop`` of every block, copied into a contiguous scratch buffer so
    they can be reinterpreted (``.view(torch.float16)`` etc.) whatever the block stride."""
    out = ws.get(name, (blocks.shape[0], stop - start), torch.uint8)
    src = wide_view(blocks, start, stop)
    out.view(src.dtype).copy_(src)
    return out


def f16_field(blocks: torch.Tensor, start: int, ws: Workspace, name: str) -> torch.Tensor:
    """The little-endian f16 at byte ``start`` of each block, as float32 ``(n, 1)``."""
    out = ws.get(name, (blocks.shape[0], 1), torch.float32)
    src = wide_view(blocks, start, start + 2)
    if src.dtype != torch.int16:
        src = field(blocks, start, start + 2, ws, name + ".raw").view(torch.int16)
    out.copy_(src.view(torch.float16))
    return out


def f16_pair(blocks: torch.Tensor, start: int, ws: Workspace, name: str) -> torch.Tensor:
    """The two little-endian f16 at bytes ``start:start+4`` of each block (``d`` and
    ``dmin``), as float32 ``(n, 2)``, converted by one op."""
    n = blocks.shape[0]
    out = ws.get(name, (n, 2), torch.float32)
    # Two steps: a strided copy of the raw words, then a contiguous f16 -> f32
    # conversion. Converting straight from the strided (n, 2) view walks n runs of 2
    # on torch's scalar path and measured ~3x slower.
    raw = field(blocks, start, start + 4, ws, name + ".raw")
    out.copy_(raw.view(torch.float16))
    return out


def scale_products(factors: torch.Tensor, ints: torch.Tensor, ws: Workspace, name: str) -> torch.Tensor:
    """``factors * ints`` in float32 (``factors`` ``(n, g, 1)`` float32 super-scales,
    ``ints`` ``(n, g, k)`` small integers): the integers are converted into a scratch
    buffer first, so the product is one same-dtype op (a mixed int*float op makes a
    temporary copy and takes torch's slow type-promotion path). One rounding, same
    as gguf's ``d * sc`` (float32 multiplication is commutative)."""
    out = ws.get(name, tuple(ints.shape), torch.float32)
    out.copy_(ints)
    return out.mul_(factors)


def u16_field(blocks: torch.Tensor, start: int, count: int, ws: Workspace, name: str) -> torch.Tensor:
    """``count`` little-endian uint16 at byte ``start``, as int32 ``(n, count)``."""
    raw = field(blocks, start, start + 2 * count, ws, name + ".raw")
    out = ws.get(name, (blocks.shape[0], count), torch.int32)
    out.copy_(raw.view(torch.int16))
    return out.bitwise_and_(0xFFFF)


def u32_field(blocks: torch.Tensor, start: int, count: int, ws: Workspace, name: str) -> torch.Tensor:
    """``count`` little-endian uint32 at byte ``start``, as int64 ``(n, count)``."""
    raw = field(blocks, start, start + 4 * count, ws, name + ".raw")
    out = ws.get(name, (blocks.shape[0], count), torch.int64)
    out.copy_(raw.view(torch.int32))
    return out.bitwise_and_(0xFFFFFFFF)


class DeviceTables:
    """Small constant tables (level values, codebooks) built once per device."""

    def __init__(self, build: callable[[], dict[str, torch.Tensor]]) -> None:  # type: ignore[valid-type]
        self._build = build
        self._cpu: dict[str, torch.Tensor] | None = None
        self._per_device: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        tables = self._per_device.get(device)
        if tables is None:
            with self._lock:
                if self._cpu is None:
                    self._cpu = self._build()
                tables = {k: v.to(device) for k, v in self._cpu.items()}
                self._per_device[device] = tables
        return tables


_SPREAD = DeviceTables(
    lambda: {
        f"spread{shift}": torch.tensor(
            [sum(((v >> b) & 1) << (8 * b + shift) for b in range(8)) for v in range(256)], dtype=torch.int64
        )
        for shift in range(7)
    }
)


def spread_bits(blocks: torch.Tensor, start: int, stop: int, ws: Workspace, name: str, shift: int = 0) -> torch.Tensor:
    """Bytes ``start:stop`` of each block -> int64 ``(n, stop - start)`` whose byte ``b``
    is bit ``b`` of the source byte, shifted left by ``shift`` (0..6): bit ``j`` of a
    little-endian bit field becomes byte ``j``, via a 256-entry table per shift (so the
    shift costs no pass). The strided bytes are copied as wide words and then widened
    to indices by one contiguous conversion (a strided uint8 -> int32 copy walks one
    short run per block and measured ~1.5x slower)."""
    n, k = blocks.shape[0], stop - start
    raw = field(blocks, start, stop, ws, name + ".raw")
    idx = ws.get(name + ".idx", (n * k,), torch.int32)
    idx.copy_(raw.view(-1))
    out = ws.get(name, (n * k,), torch.int64)
    torch.index_select(_SPREAD.on(blocks.device)[f"spread{shift}"], 0, idx, out=out)
    return out.view(n, k)


# ---- whole-block SWAR planes --------------------------------------------------------
# Torch's per-op cost is dominated by the number of *contiguous runs* an op walks, not by
# bytes: an op over a (n, 16)-byte strided slice costs ~1.5 ns per row whatever it does.
# So bit planes are computed over every byte of a chunk's blocks at once (one long
# contiguous run, wasted lanes included), and the wanted pieces are then laid out in
# weight order by a single torch.cat (one memcpy per piece).


def block_words(blocks: torch.Tensor) -> torch.Tensor:
    """The chunk's blocks ``(n, type_size)`` as one flat run of the widest integer words
    that divide its byte length (a view; the chunk is made contiguous first if needed).
    Planes are per byte, so word boundaries need not match block boundaries."""
    flat = blocks.contiguous().view(-1)
    for width, dtype in _WIDTHS:
        if flat.numel() % width == 0 and flat.data_ptr() % width == 0:
            return flat.view(dtype)
    return flat


def lane_mask(byte: int, dtype: torch.dtype) -> int:
    """``byte`` repeated in every byte lane of a word of ``dtype`` (byte < 0x80)."""
    width = torch.empty((), dtype=dtype).element_size()
    return int.from_bytes(bytes([byte]) * width, "little")


def plane(words_: torch.Tensor, n: int, shift: int, byte_mask: int, ws: Workspace, name: str) -> torch.Tensor:
    """``(byte >> shift) & byte_mask`` for every byte of ``n`` blocks given as the flat
    words of :func:`block_words` -> uint8 ``(n, type_size)``."""
    out = ws.get(name, tuple(words_.shape), words_.dtype)
    mask = lane_mask(byte_mask, words_.dtype)
    if shift:
        torch.bitwise_right_shift(words_, shift, out=out)
        out.bitwise_and_(mask)  # also clears bits shifted in from the neighbour lane / sign
    else:
        torch.bitwise_and(words_, mask, out=out)
    return out.view(torch.uint8).view(n, -1)


def assemble(pieces: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Concatenate ``(n, k_i)`` byte pieces along dim 1 into ``out`` (weight order)."""
    return torch.cat(pieces, dim=1, out=out)


# ---- lookup tables --------------------------------------------------------------------

_WORD = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def gather(table: torch.Tensor, idx: torch.Tensor, ws: Workspace, name: str) -> torch.Tensor:
    """Rows of ``table`` at ``idx`` (any integer dtype/shape) -> ``idx.shape + (w,)``.

    Each table row is reinterpreted as one machine word so ``index_select`` moves one
    element per index: 4-7x faster on CPU than gathering narrow 2-D rows.
    """
    flat = ws.get(name + ".idx", (idx.numel(),), torch.int32)
    flat.copy_(idx.reshape(-1))
    width = table.shape[1] * table.element_size()
    word = _WORD.get(width)
    if word is None:
        out = ws.get(name, (idx.numel(), table.shape[1]), table.dtype)
        torch.index_select(table, 0, flat, out=out)
        return out.view(*idx.shape, table.shape[1])
    packed = table.view(word).view(-1)
    out = ws.get(name + ".w", (idx.numel(),), word)
    torch.index_select(packed, 0, flat, out=out)
    return out.view(table.dtype).view(*idx.shape, table.shape[1])


def nibble_scales(src: torch.Tensor) -> torch.Tensor:
    """Bytes ``(n, k)`` -> 4-bit scales ``(n, 2k)``, low nibble first."""
    return torch.stack([src.bitwise_and(0x0F), src.bitwise_right_shift(4)], dim=2).view(src.shape[0], -1)


def gguf_codebook(cls: type) -> np.ndarray:
    """The codebook of an IQ type as the installed gguf package holds it (``init_grid``):
    format data, taken at run time rather than retyped."""
    cls.init_grid()  # type: ignore[attr-defined]
    return np.asarray(cls.grid).reshape(cls.grid_shape)  # type: ignore[attr-defined]
