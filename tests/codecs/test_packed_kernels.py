"""The compiled packed-layout kernels against the torch path, bit for bit, on random parts:
every layout, f32/f16/bf16 arithmetic (f16 subnormals and overflow included), act-order
group maps, chunks that start inside a word, and the split between threads. (The torch
path is held to each ecosystem's own dequantizer in tests/formats/test_packed.py.)"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from provenance.codecs.packed import awq, bnb, compressed, gptq, mlx
from provenance.codecs.packed.grid import PackedRows
from provenance.codecs.packed.native import F16, round_bf16, round_f16
from provenance.jit import kernel

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _words(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, generator=gen)


def _scales(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Scales over many binades (f16 subnormal products and overflow to infinity included)."""
    magnitude = torch.exp2(torch.randint(-30, 16, shape, generator=gen).float())
    sign = torch.where(torch.rand(shape, generator=gen) < 0.1, -1.0, 1.0)
    return (torch.rand(shape, generator=gen) * magnitude * sign).to(dtype)


def _same(ours: torch.Tensor, rows: PackedRows) -> None:
    theirs = rows.values()
    assert ours.shape == theirs.shape
    both_nan = torch.isnan(ours) & torch.isnan(theirs)
    differ = (ours.view(torch.int32) != theirs.view(torch.int32)) & ~both_nan
    assert not bool(differ.any()), f"{int(differ.sum())} of {ours.numel()} values differ"


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest) -> int:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@kernel
def _round_all(x, code, out):  # type: ignore[no-untyped-def]
    for i in range(x.shape[0]):
        out[i] = round_f16(x[i]) if code == F16 else round_bf16(x[i])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rounding_matches_torch_on_every_binade(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2**31 - 1, (1 << 20,), dtype=torch.int32, generator=gen)
    bits[:4] = torch.tensor([0x477FEFFF, 0x477FF000, 0x33000000, 0x33000001], dtype=torch.int32)  # f16 edges
    x = (bits | torch.where(torch.rand(bits.shape, generator=gen) < 0.5, -(2**31), 0).to(torch.int32)).view(torch.float32)
    out = np.empty(x.numel(), np.float32)
    _round_all(x.numpy(), 1 if dtype == torch.float16 else 2, out)
    expected = x.to(dtype).to(torch.float32)
    ours = torch.from_numpy(out)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(ours), nan)
    assert torch.equal(ours[~nan].view(torch.int32), expected[~nan].view(torch.int32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq(bits: int, dtype: torch.dtype, act_order: bool, threads: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    n_in, n_out, group = 256, 96, 32
    pf = 32 // bits
    g_idx = torch.arange(n_in) // group
    if act_order:
        g_idx = g_idx[torch.randperm(n_in, generator=gen)]
    qweight, qzeros = _words(gen, n_in // pf, n_out), _words(gen, n_in // group, n_out // pf)
    scales = _scales(gen, (n_in // group, n_out), dtype)
    for a, b in ((0, n_out), (3, 70), (pf + 1, pf + 2)):  # chunks that start inside a zero word
        z0 = a // pf
        args = (qweight[:, a:b], qzeros[:, z0:], a - z0 * pf, scales[:, a:b], g_idx, bits, 1)
        out = torch.empty((b - a, n_in))
        _same(gptq.gptq_into(*args, out), gptq.gptq_rows(*args))


@pytest.mark.parametrize("dtype", DTYPES)
def test_awq(dtype: torch.dtype, threads: int) -> None:
    gen = torch.Generator().manual_seed(3)
    n_in, words, group = 256, 12, 64
    qweight, qzeros = _words(gen, n_in, words), _words(gen, n_in // group, words)
    scales = _scales(gen, (n_in // group, 8 * words), dtype)
    for first, n in ((0, 96), (5, 60), (13, 1)):
        out = torch.empty((n, n_in))
        _same(awq.awq_into(qweight, qzeros, scales, group, first, out), awq.awq_rows(qweight, qzeros, scales, group, first, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nested", [False, True])
def test_bnb_4bit(dtype: torch.dtype, nested: bool, threads: int) -> None:
    gen = torch.Generator().manual_seed(4)
    rows, n_in, blocksize = 48, 192, 64
    levels = torch.sort(torch.randn(16, generator=gen)).values
    for skip in (0, 32, 62):  # blocks start at even elements (even rows and block sizes)
        n = rows * n_in
        packed = torch.randint(0, 256, (n // 2,), dtype=torch.uint8, generator=gen)
        n_blocks = (n + skip + blocksize - 1) // blocksize
        absmax = _scales(gen, (n_blocks,), torch.float32).abs()
        if nested:
            absmax = bnb.nested_absmax(torch.randint(0, 256, (n_blocks,), dtype=torch.uint8, generator=gen),
                                       torch.randn(256, generator=gen), torch.rand(n_blocks // 256 + 1, generator=gen), 256,
                                       0.031, 0)
        out = torch.empty((rows, n_in))
        _same(bnb.nf4_into(packed, absmax, levels, blocksize, skip, dtype, out),
              bnb.nf4_rows(packed, absmax, levels, blocksize, skip, n_in, dtype))


def test_bnb_int8(threads: int) -> None:
    gen = torch.Generator().manual_seed(5)
    codes = torch.randint(-128, 128, (80, 160), dtype=torch.int8, generator=gen)
    scb = _scales(gen, (80,), torch.float32).abs()
    _same(bnb.int8_into(codes, scb, torch.empty(80, 160)), bnb.int8_rows(codes, scb))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mlx(bits: int, dtype: torch.dtype, threads: int) -> None:
    gen = torch.Generator().manual_seed(6)
    rows, n_in, group = 40, 256, 32
    words = _words(gen, rows, n_in * bits // 32).view(torch.uint32)
    scales, biases = _scales(gen, (rows, n_in // group), dtype), _scales(gen, (rows, n_in // group), dtype)
    _same(mlx.mlx_into(words, scales, biases, bits, group, torch.empty(rows, n_in)),
          mlx.mlx_rows(words, scales, biases, bits, group))


def _groups(gen: torch.Generator, n_in: int, n_groups: int, act_order: bool) -> torch.Tensor:
    g = torch.arange(n_in) * n_groups // n_in
    return g[torch.randperm(n_in, generator=gen)] if act_order else g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy", ["tensor", "channel", "group-act-order"])
@pytest.mark.parametrize("zero", [False, True])
def test_compressed_int8(dtype: torch.dtype, strategy: str, zero: bool, threads: int) -> None:
    gen = torch.Generator().manual_seed(7)
    rows, n_in = 36, 512  # per channel the 256-code table pays; in 4 groups computing does
    n_groups = {"tensor": 1, "channel": 1, "group-act-order": 4}[strategy]
    shape = (1,) if strategy == "tensor" else (rows, n_groups)
    codes = torch.randint(-128, 128, (rows, n_in), dtype=torch.int8, generator=gen)
    scale = _scales(gen, shape, dtype)
    zp = torch.randint(-8, 8, shape, dtype=torch.int8, generator=gen).to(torch.float32) if zero else None
    groups = _groups(gen, n_in, n_groups, strategy.endswith("act-order"))
    _same(compressed.int_into(codes, scale, zp, groups, 8, torch.empty(rows, n_in)),
          compressed.int_rows(codes, scale, zp, groups, 8))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("zero", [False, True])
def test_compressed_pack_quantized(bits: int, zero: bool, threads: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    n_out, n_in, n_groups = 70, 200, 5  # 200 inputs: codes straddle words for 3 and 5 bits
    words = _words(gen, n_out, -(-n_in * bits // 32))
    scale = _scales(gen, (n_out, n_groups), torch.float16)
    groups = _groups(gen, n_in, n_groups, True)
    zero_words = _words(gen, -(-n_out * bits // 32), n_groups) if zero else None
    for a, b in ((0, n_out), (33, 67)):  # a chunk whose zeros start inside a word
        g0 = a // 32
        zw = zero_words[g0 * bits:] if zero_words is not None else None
        args = (words[a:b], n_in, bits, scale[a:b], zw, a - 32 * g0, groups)
        _same(compressed.packed_int_into(*args, torch.empty(b - a, n_in)), compressed.packed_int_rows(*args))


@pytest.mark.parametrize("dtype", DTYPES)
def test_compressed_fp8(dtype: torch.dtype, threads: int) -> None:
    gen = torch.Generator().manual_seed(8)
    for n_in in (96, 320):  # computed, and looked up in a per-row table
        codes = torch.randint(0, 256, (30, n_in), dtype=torch.uint8, generator=gen)  # NaN codes included
        scale = _scales(gen, (30, 1), dtype)
        groups = torch.zeros(n_in, dtype=torch.int64)
        _same(compressed.fp8_into(codes, scale, groups, torch.empty(30, n_in)), compressed.fp8_rows(codes, scale, groups))


Bad = Callable[[], torch.Tensor]


@pytest.mark.parametrize("call", [
    lambda: gptq.gptq_into(torch.zeros(8, 16, dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32), 0,
                           torch.ones(1, 16), torch.zeros(64, dtype=torch.int64), 4, 1, torch.empty(16, 64)),
    lambda: awq.awq_into(torch.zeros(64, 1, dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, 8), 32, 4,
                         torch.empty(8, 64)),
    lambda: bnb.nf4_into(torch.zeros(32, dtype=torch.uint8), torch.ones(1), torch.ones(16), 32, 16, torch.float32,
                         torch.empty(1, 64)),
    lambda: mlx.mlx_into(torch.zeros(2, 4, dtype=torch.uint32), torch.ones(2, 1), torch.ones(2, 2), 4, 32, torch.empty(2, 32)),
    lambda: compressed.int_into(torch.zeros(2, 8, dtype=torch.int8), torch.ones(2, 1), None, torch.ones(8, dtype=torch.int64),
                                8, torch.empty(2, 8)),
], ids=["gptq-zero-words", "awq-rows", "nf4-absmax", "mlx-biases", "ct-group-map"])
def test_parts_that_disagree_are_refused_before_the_compiled_loop(call: Bad) -> None:
    with pytest.raises(ValueError):
        call()
