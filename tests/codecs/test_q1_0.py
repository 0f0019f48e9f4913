"""Q1_0, the type added as docs/quantization.md's worked example, on a real llama.cpp file:
read, decoded, grid-checked and re-quantized through the registry alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from provenance.codecs import dequantize_rows, quantize_rows
from provenance.codecs.bits import bits_equal
from provenance.codecs.grid import quant_grid
from provenance.formats import open_checkpoint
from provenance.quant import quantcheck
from provenance.quant.gridcheck import check_block_rows
from tests.conftest import QUANT_DIR
from tests.support.ggml_reference import ggml_dequantize, llama_cpp_quantize

SOURCE = QUANT_DIR / "tiny-llama-f32.gguf"


@pytest.fixture(scope="module")
def llama_cpp_q1_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama-f32 quantized to Q1_0 by llama.cpp itself (llama_model_quantize)."""
    return llama_cpp_quantize(SOURCE, tmp_path_factory.mktemp("q1_0") / "tiny-llama-Q1_0.gguf", "Q1_0")


@pytest.mark.download
def test_real_q1_0_file_decodes_and_requantizes_exactly(llama_cpp_q1_0: Path) -> None:
    checked = 0
    with open_checkpoint(llama_cpp_q1_0) as ck, open_checkpoint(SOURCE) as src:
        for name, info in ck.tensors.items():
            if info.dtype != "Q1_0":
                continue
            raw = ck.raw_rows(name)
            want = ggml_dequantize(raw, T.Q1_0)
            assert bits_equal(ck.read_rows(name), want), name  # reader -> compiled kernel
            assert bits_equal(dequantize_rows(raw, T.Q1_0, native=False), want), name  # torch kernel
            assert bits_equal(quant_grid(raw, T.Q1_0).values().numpy(), want), name
            assert np.array_equal(quantize_rows(src.read_rows(name), "Q1_0"), raw), name
            checked += 1
    assert checked >= 10


@pytest.mark.download
def test_quantcheck_finds_the_real_q1_0_file_exact(llama_cpp_q1_0: Path) -> None:
    result = quantcheck(llama_cpp_q1_0, SOURCE)
    q1 = [t for t in result.tensors if t.qtype == "Q1_0"]
    assert len(q1) >= 10 and {t.status for t in q1} == {"exact"}
    assert result.verdict == "exact" and result.source_precision == "f32"


def test_q1_0_recipe_sees_a_flipped_sign() -> None:
    # no llama.cpp needed: our own quantization of x is exact, and a source whose weight
    # crossed zero shows as one unexplained flip in the right direction
    x = (np.random.default_rng(0).standard_normal((4, 256)) * 0.02).astype(np.float32)
    stored = quantize_rows(x, "Q1_0")
    counts, _ = check_block_rows(torch.from_numpy(x), stored, int(T.Q1_0), "f32")
    assert counts.n_unexplained == 0 and counts.n_blocks_scale_mismatch == 0 and counts.n_checked == x.size
    moved = x.copy()
    moved[1, 7] = -moved[1, 7]
    counts, _ = check_block_rows(torch.from_numpy(moved), stored, int(T.Q1_0), "f32")
    assert counts.n_unexplained == 1 and counts.n_up + counts.n_down == 1
