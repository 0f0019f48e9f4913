"""Dequantize rows of stored ggml blocks to float32.

The kernels come from each type's descriptor in :mod:`provenance.codecs.registry`. On the
CPU, types with a compiled kernel go through it (one fused pass); CUDA tensors and the
other types through the torch kernels; plain types are a cast. The byte ranges passed
here have already been validated by the reader (bounds, block alignment). Results are
bit-identical to ``gguf.quants.dequantize`` (NaN payloads aside: any NaN stays a NaN);
unregistered types that gguf can dequantize are handed to it.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from provenance.codecs.kernels import Decoded, workspace
from provenance.codecs.native import run_compiled
from provenance.codecs.registry import find_quant_type, quant_type
from provenance.codecs.types import plain_type, type_info

DEFAULT_CHUNK_ELEMS = 1 << 20
"""Weights decoded per chunk: big enough that per-op overhead is small, small enough
that the scratch buffers stay in cache (measured best on the 2-core target)."""


def as_torch(raw: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a (possibly read-only, memory-mapped) uint8 array.

    The kernels never write to their input, so torch's warning about read-only
    arrays does not apply.
    """
    arr = np.ascontiguousarray(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def combine(dec: Decoded, out: torch.Tensor) -> None:
    """``out = scale * level (+ offset)`` with one float32 rounding per operation."""
    o = out.view(dec.levels.shape)
    o.copy_(dec.levels)
    o.mul_(dec.scale)
    if dec.offset is not None:
        if dec.subtract_offset:
            o.sub_(dec.offset)
        else:
            o.add_(dec.offset)


def _plain(raw: torch.Tensor, dtype: torch.dtype, out: torch.Tensor) -> None:
    try:
        src = raw.view(dtype)
    except RuntimeError:  # misaligned or strided bytes: copy them first
        src = raw.contiguous().view(dtype)
    out.copy_(src.view(out.shape))


def dequantize_torch(
    raw: torch.Tensor,
    ggml_type: int,
    out: torch.Tensor | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    native: bool = True,
) -> torch.Tensor:
    """``(rows, row_bytes)`` uint8 on any device -> ``(rows, row_length)`` float32 there.

    On the CPU, compiled kernels write ``out`` in one pass on ``torch.get_num_threads()``
    threads (``native=False`` forces the torch kernels, which the tests also hold to
    gguf). Otherwise blocks are decoded ``chunk_elems`` weights at a time into reused
    scratch buffers and written straight into ``out`` (allocated when not given).
    """
    info = type_info(ggml_type)
    if raw.dim() == 1:
        raw = raw.view(1, -1)
    rows, row_bytes = raw.shape
    if row_bytes % info.type_size:
        raise ValueError(f"{info.name}: {row_bytes} bytes per row is not a whole number of blocks")
    row_length = row_bytes // info.type_size * info.block_size
    if out is None:
        out = torch.empty((rows, row_length), dtype=torch.float32, device=raw.device)
    elif out.shape != (rows, row_length) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be contiguous float32 of shape {(rows, row_length)}")
    if rows == 0 or row_length == 0:
        return out
    plain = plain_type(info.ggml_type)
    if plain is not None:
        _plain(raw, plain.torch_dtype(), out)
        return out
    qt = find_quant_type(info.ggml_type)
    if qt is None:
        host = raw.cpu().numpy()
        ref = gguf_quants.dequantize(host, GGMLQuantizationType(info.ggml_type))
        out.copy_(torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)).view(rows, row_length))
        return out
    if native and raw.device.type == "cpu" and qt.compiled is not None:
        blocks_np = raw.contiguous().numpy().reshape(-1, info.type_size)
        run_compiled(qt.compiled, blocks_np, out.numpy().reshape(-1, info.block_size), torch.get_num_threads())
        return out
    blocks = raw.reshape(-1, info.type_size)
    flat = out.view(-1, info.block_size)
    ws = workspace(raw.device)
    # A multiple of 8 blocks keeps every chunk a whole number of int64 words.
    step = max(8, chunk_elems // info.block_size // 8 * 8)
    for start in range(0, blocks.shape[0], step):
        stop = min(start + step, blocks.shape[0])
        combine(qt.decode(blocks[start:stop], ws), flat[start:stop])
    return out


def dequantize_blocks_native(blocks: np.ndarray, ggml_type: int, out: np.ndarray, threads: int = 1) -> None:
    """``(n, type_size)`` uint8 blocks -> ``out`` ``(n, block_size)`` float32, in place,
    through the type's compiled kernel.

    Both arrays must be C-contiguous; ``threads`` > 1 splits the blocks between threads.
    The shapes are checked here because the compiled loops do not check their indices.
    """
    qt = quant_type(ggml_type)
    if qt.compiled is None:
        raise NotImplementedError(f"{qt.name} has no compiled kernel")
    n = blocks.shape[0] if blocks.ndim == 2 else -1
    if (blocks.dtype != np.uint8 or blocks.shape != (n, qt.type_size) or out.dtype != np.float32
            or out.shape != (n, qt.block_size) or not (blocks.flags.c_contiguous and out.flags.c_contiguous)):
        raise ValueError(f"{qt.name}: need C-contiguous uint8 (n, {qt.type_size}) blocks and float32 "
                         f"(n, {qt.block_size}) out, got {blocks.dtype} {blocks.shape} and {out.dtype} {out.shape}")
    run_compiled(qt.compiled, blocks, out, threads)


def dequantize_rows(raw: np.ndarray, ggml_type: int, native: bool = True) -> np.ndarray:
    """``(rows, row_bytes)`` uint8 stored blocks -> ``(rows, row_length)`` float32
    (``native=False``: the torch kernels even where a compiled one exists)."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = raw.view(np.uint8)
    shape = raw.shape
    if raw.ndim != 2:
        raw = raw.reshape(-1, shape[-1]) if raw.ndim else raw.reshape(1, 1)
    result = dequantize_torch(as_torch(raw), ggml_type, native=native).numpy()
    return result.reshape(*shape[:-1], result.shape[-1]) if len(shape) > 1 else result.reshape(-1)
