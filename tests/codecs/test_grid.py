"""Quantization grids: codes, scales and offsets that reproduce the stored values exactly."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from provenance.codecs import dequantize_rows
from provenance.codecs.bits import bits_equal
from provenance.codecs.grid import codebook, level_table, quant_grid
from provenance.codecs.quanttype import UniformGrid
from provenance.codecs.registry import QUANT_TYPES, quant_type
from provenance.formats import open_checkpoint
from tests.conftest import single_torch_thread

QUANT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "llamacpp-quant"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():  # type: ignore[no-untyped-def]
    with single_torch_thread():
        yield


@pytest.mark.parametrize("qtype", [qt.qtype for qt in QUANT_TYPES.values()], ids=lambda t: t.name)
def test_grid_reproduces_values_and_cells_contain_them(qtype: T) -> None:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(int(qtype)).integers(0, 256, (16, 4 * type_size), dtype=np.uint8)
    grid = quant_grid(raw, qtype)
    values = grid.values().numpy()
    assert bits_equal(values, dequantize_rows(raw, qtype))
    assert grid.codes.shape == (16, 4 * block_size)
    assert grid.scale.shape[1] * grid.sub_size == 4 * block_size
    assert int(grid.codes.min()) >= grid.qmin and int(grid.codes.max()) <= grid.qmax
    lo, hi = grid.cell_bounds()
    finite = np.isfinite(values) & np.isfinite(grid.scale_per_weight().numpy())
    assert ((lo.numpy() <= values) & (values <= hi.numpy()))[finite].all()


def test_q4k_formula_on_a_hand_made_block() -> None:
    """d=0.5, dmin=0.25, sub-block 0: scale 3, min 2; all codes 5 -> 0.5*3*5 - 0.25*2."""
    scales = bytes([3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
    block = struct.pack("<ee", 0.5, 0.25) + scales + bytes([0x55] * 128)
    grid = quant_grid(np.frombuffer(block, np.uint8).reshape(1, -1), T.Q4_K)
    assert grid.scale[0, 0] == 1.5 and grid.offset is not None and grid.offset[0, 0] == -0.5
    assert (grid.codes[0, :32] == 5).all()
    assert grid.values()[0, 0] == 1.5 * 5 - 0.5


def test_q4_0_negative_scale_cells() -> None:
    # llama.cpp's Q4_0 scale is max/-8, often negative: cells must still be ordered.
    block = struct.pack("<e", -0.125) + bytes([0x80] * 16)  # low nibble 0 -> code -8, high 8 -> 0
    grid = quant_grid(np.frombuffer(block, np.uint8).reshape(1, -1), T.Q4_0)
    lo, hi = grid.cell_bounds()
    assert grid.codes[0, 0] == -8 and grid.values()[0, 0] == 1.0
    assert hi[0, 0] == np.inf and lo[0, 0] == pytest.approx(1.0 - 0.0625)
    assert lo[0, 16] == pytest.approx(-0.0625) and hi[0, 16] == pytest.approx(0.0625)


def test_level_tables_and_codebooks() -> None:
    assert level_table(T.Q4_K) is None and quant_type(T.Q6_K).grid == UniformGrid(-32, 31)
    iq4 = level_table(T.IQ4_XS)
    assert iq4 is not None and iq4.tolist()[:3] == [-127.0, -104.0, -83.0] and len(iq4) == 16
    assert level_table(T.IQ2_XXS).tolist() == [-43.0, -25.0, -8.0, 8.0, 25.0, 43.0]
    book = codebook(T.IQ2_XXS)
    assert book is not None and book.shape == (256, 8) and set(book.unique().tolist()) == {8, 25, 43}
    assert codebook(T.IQ3_S).shape == (512, 4) and codebook(T.Q4_K) is None


@pytest.mark.parametrize("name", ["tiny-llama-Q2_K.gguf", "tiny-llama-IQ4_XS.gguf", "tiny-llama-Q5_K_M.gguf"])
def test_real_file_grids(name: str) -> None:
    with open_checkpoint(QUANT_DIR / name) as ck:
        for tensor in ck.tensors.values():
            if tensor.block_size == 1:
                continue
            raw = ck.raw_rows(tensor.name)
            grid = quant_grid(raw, tensor.ggml_type)
            assert bits_equal(grid.values().numpy(), ck.read_rows(tensor.name))
            if grid.uniform:  # a real quantizer uses (nearly) the whole code range somewhere
                assert int(grid.codes.max()) - int(grid.codes.min()) >= (grid.qmax - grid.qmin) // 2


def test_grid_on_torch_input_and_plain_type_refused() -> None:
    raw = torch.zeros((2, 34), dtype=torch.uint8)
    assert quant_grid(raw, T.Q8_0).codes.shape == (2, 32)
    with pytest.raises(NotImplementedError):
        quant_grid(np.zeros((2, 4), np.uint8), T.F16)
