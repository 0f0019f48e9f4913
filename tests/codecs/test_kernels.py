"""Dequantization kernels, compiled (CPU) and torch (any device, here on the CPU):
bit-exact with gguf.quants.dequantize on the real llama.cpp files and on random /
hostile blocks."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance.codecs import dequantize_rows, dequantize_torch, kernel_coverage
from provenance.codecs.bits import bits_equal, count_bit_mismatches
from provenance.codecs.registry import QUANT_TYPES
from provenance.formats import open_checkpoint
from provenance.threads import torch_threads
from tests.conftest import single_torch_thread
from tests.support.ggml_reference import has_reference, reference_dequantize

QUANT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "llamacpp-quant"
GGUF_FILES = sorted(QUANT_DIR.glob("*.gguf"))
#: every registered type this machine has a reference dequantizer for (gguf-py, or llama.cpp's C)
NATIVE = [qt.qtype for qt in QUANT_TYPES.values() if has_reference(qt.ggml_type)]
#: the types with a compiled CPU kernel
NATIVE_TYPES = {qt.ggml_type for qt in QUANT_TYPES.values() if qt.compiled is not None and has_reference(qt.ggml_type)}

# Byte offsets of the f16 scales/mins inside one block, to plant special values there.
F16_FIELDS: dict[T, list[int]] = {
    qt.qtype: list(qt.f16_scales) for qt in QUANT_TYPES.values() if qt.f16_scales and has_reference(qt.ggml_type)
}
#: both CPU paths: the compiled kernels (the default) and the torch kernels (CUDA's code)
BACKENDS = pytest.mark.parametrize("native", [True, False], ids=["compiled", "torch"])
SPECIAL_F16 = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE00, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():  # type: ignore[no-untyped-def]
    with single_torch_thread():
        yield


def reference(raw: np.ndarray, qtype: T) -> np.ndarray:
    return reference_dequantize(raw, qtype)


def random_blocks(qtype: T, n_blocks: int, seed: int) -> np.ndarray:
    _, type_size = GGML_QUANT_SIZES[qtype]
    return np.random.default_rng(seed).integers(0, 256, (n_blocks, type_size), dtype=np.uint8)


def test_every_listed_type_is_native() -> None:
    coverage = kernel_coverage()
    wanted = ("F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS IQ2_XXS IQ2_XS IQ2_S IQ3_XXS "
              "IQ3_S IQ1_S IQ1_M TQ1_0 TQ2_0 MXFP4")
    assert {name: coverage[name] for name in wanted.split()} == {name: "native" for name in wanted.split()}
    # Every type gguf can dequantize is covered one way or the other.
    assert all(coverage[t.name] in ("native", "fallback") for t in gguf.quants._type_traits)


@pytest.mark.parametrize("path", GGUF_FILES, ids=lambda p: p.name)
def test_real_llamacpp_files_bit_exact(path: Path) -> None:
    """Every tensor of every real llama.cpp file, read through our reader, equals gguf's
    numpy dequantization of the bytes gguf's own reader returns."""
    reader = gguf.GGUFReader(path)
    checked = set()
    with open_checkpoint(path) as ck:
        for tensor in reader.tensors:
            qtype = T(tensor.tensor_type)
            want = (
                reference(np.asarray(tensor.data).reshape(-1, np.asarray(tensor.data).shape[-1]), qtype)
                if qtype not in (T.F32, T.F16)
                else np.asarray(tensor.data, dtype=np.float32)
            )
            got = ck.read_rows(tensor.name)
            assert bits_equal(got, want.reshape(got.shape)), (path.name, tensor.name)
            checked.add(qtype.name)
    assert checked  # the file had tensors


def test_compiled_kernels_refuse_mismatched_shapes() -> None:
    # the compiled loops do not bounds-check, so their entry point checks the shapes
    from provenance.codecs.dequant import dequantize_blocks_native

    blocks = random_blocks(T.Q4_K, 4, seed=0)
    for bad_blocks, bad_out in (
        (blocks, np.empty((4, 255), np.float32)),
        (blocks[:, :-1], np.empty((4, 256), np.float32)),
        (blocks, np.empty((5, 256), np.float32)),
        (blocks, np.empty((4, 256), np.float64)),
    ):
        with pytest.raises(ValueError, match="Q4_K"):
            dequantize_blocks_native(bad_blocks, T.Q4_K, bad_out)


def test_compiled_types_are_a_subset_of_the_torch_kernels() -> None:
    # CUDA tensors take the torch kernels, so every compiled type needs one there too.
    assert all(callable(QUANT_TYPES[t].decode) for t in NATIVE_TYPES)
    assert {T.Q8_0, T.Q4_K, T.Q6_K, T.IQ4_XS, T.IQ1_M} <= NATIVE_TYPES


@BACKENDS
@pytest.mark.parametrize("qtype", NATIVE, ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype: T, native: bool) -> None:
    # Random bytes hit every code, NaN/inf/subnormal scales included.
    raw = random_blocks(qtype, 3000, seed=int(qtype))
    assert count_bit_mismatches(dequantize_rows(raw, qtype, native), reference(raw, qtype)) == 0


@pytest.mark.parametrize("qtype", sorted(NATIVE_TYPES), ids=lambda t: T(t).name)
def test_compiled_kernels_split_between_threads(qtype: int) -> None:
    # Enough blocks that two threads each take a part; the seam must not show.
    raw = random_blocks(T(qtype), (1 << 17) // GGML_QUANT_SIZES[T(qtype)][0] + 7, seed=3)
    with torch_threads(2):
        got = dequantize_rows(raw, qtype)
    assert count_bit_mismatches(got, reference(raw, T(qtype))) == 0


@BACKENDS
@pytest.mark.parametrize("qtype", sorted(F16_FIELDS, key=int), ids=lambda t: t.name)
def test_special_f16_scales(qtype: T, native: bool) -> None:
    raw = random_blocks(qtype, len(SPECIAL_F16) ** 2, seed=7)
    values = np.array(SPECIAL_F16, dtype=np.uint16)
    for k, offset in enumerate(F16_FIELDS[qtype]):
        # Every pair of special values when a type has two f16 fields.
        pick = np.repeat(values, len(values)) if k == 0 else np.tile(values, len(values))
        raw[:, offset : offset + 2] = pick.view(np.uint8).reshape(-1, 2)
    got, want = dequantize_rows(raw, qtype, native), reference(raw, qtype)
    assert bits_equal(got, want)
    assert np.isnan(got).any() and np.isinf(got).any() and (got == 0).any()


@BACKENDS
def test_special_scales_iq1m_mxfp4_nvfp4(native: bool) -> None:
    raw = random_blocks(T.MXFP4, 256, seed=1)
    raw[:, 0] = np.arange(256)  # every e8m0 exponent, 0/1 give subnormal halves, 255 = 2^127
    assert bits_equal(dequantize_rows(raw, T.MXFP4, native), reference(raw, T.MXFP4))
    raw = random_blocks(T.NVFP4, 256, seed=2)
    raw[:, 0:4] = np.arange(256)[:, None]  # every E4M3 byte incl. 0x7F/0xFF (treated as zero)
    assert bits_equal(dequantize_rows(raw, T.NVFP4, native), reference(raw, T.NVFP4))
    raw = random_blocks(T.IQ1_M, len(SPECIAL_F16), seed=3)
    words = raw[:, 48:56].copy().view(np.uint16)
    for i, bits in enumerate(SPECIAL_F16):  # the f16 scale is spread over 4 top nibbles
        words[i] = (words[i] & 0x0FFF) | (
            np.array([bits << 12, bits << 8, bits << 4, bits], dtype=np.uint64) & 0xF000
        ).astype(np.uint16)
    raw[:, 48:56] = words.view(np.uint8)
    got = dequantize_rows(raw, T.IQ1_M, native)
    assert bits_equal(got, reference(raw, T.IQ1_M)) and np.isinf(got).any()


@settings(max_examples=60, deadline=None)
@given(qtype=st.sampled_from(NATIVE), native=st.booleans(), data=st.data())
def test_hypothesis_blocks(qtype: T, native: bool, data: st.DataObject) -> None:
    _, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = data.draw(st.integers(1, 6))
    raw = np.frombuffer(data.draw(st.binary(min_size=n_blocks * type_size, max_size=n_blocks * type_size)), np.uint8)
    raw = raw.reshape(n_blocks, type_size)
    assert bits_equal(dequantize_rows(raw, qtype, native), reference(raw, qtype))


@BACKENDS
@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_0, T.IQ2_S, T.IQ1_M], ids=lambda t: t.name)
def test_chunking_and_out_buffer(qtype: T, native: bool) -> None:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, 3 * 7, seed=5).reshape(7, 3 * type_size)  # 7 rows of 3 blocks
    want = reference(raw, qtype)
    x = torch.from_numpy(raw)
    for chunk in (1, block_size, 5 * block_size, 1 << 20):  # chunk boundaries inside rows
        out = torch.full((7, 3 * block_size), 123.0)
        assert dequantize_torch(x, qtype, out=out, chunk_elems=chunk, native=native) is out
        assert bits_equal(out.numpy(), want)


def test_plain_types_and_shapes() -> None:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 16, (5, 64), dtype=np.uint16)
    bits[0, :4] = [0x7C00, 0xFC00, 0x7E01, 0x0001]
    assert bits_equal(dequantize_rows(bits.view(np.uint8), T.F16), bits.view(np.float16).astype(np.float32))
    assert bits_equal(dequantize_rows(bits.view(np.uint8), T.BF16), (bits.astype(np.uint32) << 16).view(np.float32))
    f32 = rng.standard_normal((3, 8)).astype(np.float32)
    assert bits_equal(dequantize_rows(f32.view(np.uint8), T.F32), f32)
    f64 = rng.standard_normal((3, 8))
    assert bits_equal(dequantize_rows(f64.view(np.uint8), T.F64), f64.astype(np.float32))
    # A read-only memory map, as readers hand over, and a 1-D row.
    ro = random_blocks(T.Q8_0, 4, seed=1).reshape(-1)
    ro.setflags(write=False)
    assert dequantize_rows(ro, T.Q8_0).shape == (128,)
    with pytest.raises(ValueError):
        dequantize_torch(torch.zeros(2, 35, dtype=torch.uint8), T.Q8_0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("qtype", NATIVE, ids=lambda t: t.name)
def test_cuda_matches_cpu(qtype: T) -> None:
    raw = random_blocks(qtype, 2000, seed=11)
    got = dequantize_torch(torch.from_numpy(raw).cuda(), qtype).cpu().numpy()
    assert bits_equal(got, reference(raw, qtype))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_thread_split_works_in_a_forked_child() -> None:
    # the split's thread pool must not be inherited across fork (its threads are not)
    import multiprocessing as mp

    raw = random_blocks(T.Q8_0, 1 << 13, seed=4)
    with torch_threads(2):
        parent = dequantize_rows(raw, T.Q8_0)  # creates the pool in this process
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_dequantize_two_threads, (raw,)).get(timeout=60)
    assert bits_equal(child, parent)


def _dequantize_two_threads(raw: np.ndarray) -> np.ndarray:
    with torch_threads(2):
        return dequantize_rows(raw, T.Q8_0)
