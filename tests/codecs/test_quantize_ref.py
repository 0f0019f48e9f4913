"""Bit-exactness of our llama.cpp reference quantizers against the real llama.cpp output.

Every quantized tensor of every file in shared/data/llamacpp-quant is re-quantized from
its true source (see TRUE_SOURCE) and must reproduce the stored bytes exactly.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from functools import lru_cache

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gguf_quants

from provenance.codecs.native.floats import nearest_int
from provenance.codecs.quantize_ref import quantize_rows, supported_types
from provenance.jit import kernel
from tests.conftest import QUANT_DIR

torch.set_num_threads(1)

# Which file each llama.cpp output was quantized from (established by these very tests:
# quantizing from the other source mismatches, see test_wrong_source_mismatches).
TRUE_SOURCE = {
    "tiny-llama-Q8_0.gguf": "tiny-llama-f16.gguf",
    "tiny-llama-Q4_0.gguf": "tiny-llama-f16.gguf",
    "tiny-llama-Q2_K.gguf": "tiny-llama-f16.gguf",
    "tiny-llama-Q4_K_M.gguf": "tiny-llama-f16.gguf",
    "tiny-llama-Q5_K_M.gguf": "tiny-llama-f16.gguf",
    "tiny-llama-Q6_K.gguf": "tiny-llama-f16.gguf",
    "tiny-llama-Q5_0.gguf": "tiny-llama-f32.gguf",
    "tiny-llama-Q3_K_M.gguf": "tiny-llama-f32.gguf",
    "tiny-llama-Q4_K_S.gguf": "tiny-llama-f32.gguf",
    "tiny-llama-IQ4_XS.gguf": "tiny-llama-f32.gguf",
    "stories260K-Q8_0.gguf": "stories260K-f32.gguf",
}


@lru_cache(maxsize=4)
def source_values(name: str) -> dict[str, np.ndarray]:
    """float32 rows of every tensor of a source file (f16 widened exactly, as llama.cpp does)."""
    reader = GGUFReader(QUANT_DIR / name)
    return {t.name: np.asarray(t.data).astype(np.float32).reshape(-1, int(t.shape[0])) for t in reader.tensors}


def quantized_tensors(name: str) -> list[tuple[str, str, np.ndarray]]:
    reader = GGUFReader(QUANT_DIR / name)
    out = []
    for t in reader.tensors:
        if t.tensor_type.name in ("F32", "F16"):
            continue
        data = np.asarray(t.data)
        out.append((t.name, t.tensor_type.name, data.reshape(-1, data.shape[-1])))
    return out


@pytest.mark.parametrize("quant_file", sorted(TRUE_SOURCE))
def test_every_tensor_bit_exact(quant_file: str) -> None:
    src = source_values(TRUE_SOURCE[quant_file])
    checked = 0
    for name, qtype, stored in quantized_tensors(quant_file):
        ours = quantize_rows(src[name], qtype)
        assert ours.shape == stored.shape, name
        bad = np.flatnonzero((ours != stored).any(axis=1))
        assert bad.size == 0, f"{quant_file} {name} ({qtype}): {bad.size} rows differ, first {bad[:5]}"
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("quant_file,wrong_source", [
    ("tiny-llama-Q4_K_M.gguf", "tiny-llama-f32.gguf"),
    ("tiny-llama-Q3_K_M.gguf", "tiny-llama-f16.gguf"),
])
def test_wrong_source_mismatches(quant_file: str, wrong_source: str) -> None:
    """The source attribution is real: the other precision does not reproduce the file."""
    src = source_values(wrong_source)
    name, qtype, stored = quantized_tensors(quant_file)[2]
    assert (quantize_rows(src[name], qtype) != stored).any(axis=1).sum() > 10


@kernel
def _nearest_ints(v, out):  # type: ignore[no-untyped-def]
    for i in range(v.shape[0]):
        out[i] = nearest_int(v[i])


def test_nearest_int_is_the_c_bit_trick() -> None:
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.uniform(-100, 100, 10000), np.arange(-20, 20) + 0.5, [np.inf]]).astype(np.float32)
    out = np.empty(v.size, np.int64)
    _nearest_ints(v, out)
    assert np.array_equal(out[:-1], np.rint(v[:-1]).astype(np.int64))  # half to even
    # outside the valid range the C code reads the mantissa bits; so do we
    assert out[-1] == -(1 << 22)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ4_NL"])
def test_degenerate_blocks_and_round_trip(qtype: str) -> None:
    """Zero, constant, tiny and spiky blocks quantize without warnings-as-errors or NaNs,
    and the result decodes (gguf) close to the input."""
    rng = np.random.default_rng(2)
    rows = [np.zeros(512), np.full(512, 0.3), np.full(512, -0.3), rng.normal(0, 1e-30, 512),
            np.where(rng.random(512) < 0.01, 5.0, 0.0), rng.normal(0, 0.02, 512)]
    x = np.stack(rows).astype(np.float32)
    q = quantize_rows(x, qtype)
    y = gguf_quants.dequantize(q, GGMLQuantizationType[qtype])
    assert np.isfinite(y).all()
    assert np.array_equal(y[0], np.zeros(512, np.float32))
    err = np.linalg.norm(y[-1] - x[-1]) / np.linalg.norm(x[-1])
    assert err < {"Q2_K": 0.4, "Q3_K": 0.25}.get(qtype, 0.12)


def test_legacy_types_equal_gguf() -> None:
    """gguf-py's numpy quantizers are exact ports of the same C: ours agree with them too
    (zero blocks and exact .5 ties included), on one thread and split between two."""
    x = np.random.default_rng(3).normal(0, 0.02, (64, 256)).astype(np.float32)
    x[0, :32] = 0.0
    x[1] = np.round(x[1] * 1e3) / 1e3
    for qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        want = gguf_quants.quantize(x, GGMLQuantizationType[qtype])
        assert np.array_equal(quantize_rows(x, qtype), want)
        assert np.array_equal(quantize_rows(np.tile(x, (16, 1)), qtype, threads=2), np.tile(want, (16, 1)))
    assert np.array_equal(quantize_rows(x, "F16").view(np.float16), x.astype(np.float16))
    assert "Q4_K" in supported_types()
    with pytest.raises(NotImplementedError):
        quantize_rows(x, "IQ2_XXS")
    with pytest.raises(ValueError):
        quantize_rows(x[:, :128], "Q4_K")
