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

import torch


@dataclass
class Decoded:
    """One chunk of blocks decoded to levels and scales (see module docstring)."""

    levels: torch.Tensor
    """``(n_blocks, n_sub, sub_size)``; int8 or float32, exact."""
    scale: torch.Tensor
    """``(n_blocks, n_sub, 1)`` float32."""
    offset: torch.Tensor | None = None
    """``(n_blocks, n_sub, 1)`` float32 or None. Added after the product."""
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


def field(blocks: torch.Tensor, start: int, stop: int, ws: Workspace, name: str) -> torch.Tensor:
    """Bytes ``start:stop`` of every block, copied into a contiguous scratch buffer so
    they can be reinterpreted (``.view(torch.float16)`` etc.) whatever the block stride."""
    out = ws.get(name, (blocks.shape[0], stop - start), torch.uint8)
    out.copy_(blocks[:, start:stop])
    return out


def f16_field(blocks: torch.Tensor, start: int, ws: Workspace, name: str) -> torch.Tensor:
    """The little-endian f16 at byte ``start`` of each block, as float32 ``(n, 1)``."""
    raw = field(blocks, start, start + 2, ws, name + ".raw")
    out = ws.get(name, (blocks.shape[0], 1), torch.float32)
    out.copy_(raw.view(torch.float16))
    return out


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


def nibbles(src: torch.Tensor, out_lo: torch.Tensor, out_hi: torch.Tensor) -> None:
    """Low and high 4-bit halves of each byte of ``src`` into two uint8 views."""
    torch.bitwise_and(src, 0x0F, out=out_lo)
    torch.bitwise_right_shift(src, 4, out=out_hi)


class DeviceTables:
    """Small constant tables (level values, codebooks) built once per device."""

    def __init__(self, build: "callable[[], dict[str, torch.Tensor]]") -> None:  # type: ignore[valid-type]
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
