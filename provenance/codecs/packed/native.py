"""What the compiled packed-layout kernels share: the final rounding to the ecosystem's
arithmetic dtype, and the call that hands a kernel its arrays on the CPU.

Each ecosystem's dequantizer returns its values in a dtype of its own (GPTQ/AWQ kernels in
their fp16 scales' dtype, bitsandbytes in the quant state's dtype, MLX in the scales'
dtype); the float32 rows we return are those values, bit for bit. The torch path rounds
with ``.to(dtype).to(float32)``; the kernels round the float32 result in registers with
the same round-to-nearest-even (:func:`round_to`), including f16 subnormals and the
overflow to infinity. numba has no float16 type on the CPU, so a float scale or bias
array reaches a kernel as float32 (exact: every f16/bf16 value is a float32) together
with the code of the dtype to round to (:func:`arithmetic_code`).
"""
from __future__ import annotations

import numpy as np
import torch

from provenance.codecs.native.parallel import run_rows
from provenance.jit import inline

#: rounding codes passed to the kernels
F32, F16, BF16 = 0, 1, 2
_CODES = {torch.float32: F32, torch.float16: F16, torch.bfloat16: BF16}


def arithmetic_code(dtype: torch.dtype) -> int:
    """The kernels' code for the dtype an ecosystem's dequantizer returns."""
    try:
        return _CODES[dtype]
    except KeyError:
        raise ValueError(f"no compiled rounding to {dtype}") from None


@inline
def round_f16(v):  # type: ignore[no-untyped-def]
    """float32 ``v`` rounded to the nearest float16 (ties to even), as float32."""
    u = np.float32(v).view(np.uint32)
    a = np.uint32(u & np.uint32(0x7FFFFFFF))
    if a >= np.uint32(0x7F800000):  # inf, nan
        return v
    if a >= np.uint32(0x477FF000):  # >= 65520: beyond the largest f16 after rounding
        return np.float32(np.inf) if v > 0 else np.float32(-np.inf)
    if a < np.uint32(0x38800000):  # below 2**-14: f16 subnormals are multiples of 2**-24 (both scalings exact)
        return np.float32(np.rint(v * np.float32(16777216.0)) * np.float32(5.9604644775390625e-08))
    lsb = np.uint32((a >> np.uint32(13)) & np.uint32(1))
    a = np.uint32((a + np.uint32(0xFFF) + lsb) & np.uint32(0xFFFFE000))
    return np.uint32((u & np.uint32(0x80000000)) | a).view(np.float32)


@inline
def round_bf16(v):  # type: ignore[no-untyped-def]
    """float32 ``v`` rounded to the nearest bfloat16 (ties to even), as float32."""
    u = np.float32(v).view(np.uint32)
    if np.uint32(u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # nan
        return v
    lsb = np.uint32((u >> np.uint32(16)) & np.uint32(1))
    return np.uint32((u + np.uint32(0x7FFF) + lsb) & np.uint32(0xFFFF0000)).view(np.float32)


@inline
def round_to(v, arith):  # type: ignore[no-untyped-def]
    """``v`` rounded to the arithmetic dtype ``arith`` (:data:`F32`, :data:`F16`, :data:`BF16`)."""
    if arith == 1:
        return round_f16(v)
    if arith == 2:
        return round_bf16(v)
    return v


@inline
def affine_levels(table, zero, scale, arith):  # type: ignore[no-untyped-def]
    """``table[q] = (q - zero) * scale`` rounded to ``arith``, for every code ``q``: the values a
    group's codes decode to. The kernels look codes up in such tables wherever a group has
    more weights than codes, so each distinct value is computed (and rounded) once."""
    for q in range(table.shape[0]):
        table[q] = round_to((np.float32(q) - zero) * scale, arith)


def as_f32(t: torch.Tensor) -> np.ndarray:
    """A small per-group/per-row float tensor (scales, biases, zeros) as contiguous float32 numpy."""
    return np.ascontiguousarray(t.to(torch.float32).numpy())


def compiled_ok(out: torch.Tensor, *inputs: torch.Tensor) -> bool:
    """Whether the compiled kernels can run: every tensor on the CPU."""
    return out.device.type == "cpu" and all(t.device.type == "cpu" for t in inputs)


def run_kernel(fn: object, args: tuple[object, ...], out: torch.Tensor) -> torch.Tensor:
    """``fn(*args, out, r0, r1)`` on row ranges of ``out`` (a contiguous CPU float32 tensor),
    split between ``torch.get_num_threads()`` threads like the ggml kernels."""
    if out.dtype != torch.float32 or not out.is_contiguous() or out.dim() != 2:
        raise ValueError(f"out must be contiguous 2-D float32, got {out.dtype} {tuple(out.shape)}")
    if out.shape[0] and out.shape[1]:
        run_rows(fn, args, out.numpy(), torch.get_num_threads())  # type: ignore[arg-type]
    return out
