"""One sketch builder: a tensor's slices, however its rows arrive, are the slices of the whole tensor."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from provenance.compare.sketch import SketchBuilder, TensorSketch, residual_subset, sketch_tensor, token_subset
from provenance.formats import open_checkpoint
from tests.conftest import QUANT_DIR

MODEL = QUANT_DIR / "tiny-llama-Q4_K_M.gguf"  # quantized by llama.cpp: rows come through the codecs


def _expected(role: str, full: np.ndarray, residual: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    if role in ("token_embd", "output"):
        return full[tokens[tokens < len(full)]][:, residual]
    if role in ("ffn_down", "attn_output"):
        return full[residual[residual < len(full)]]
    if full.ndim == 1:
        return full[residual]
    return full[:, residual]


@pytest.mark.parametrize("chunk_rows", [3, 100000])
def test_streamed_slices_are_the_slices_of_the_whole_tensor(chunk_rows: int) -> None:
    with open_checkpoint(MODEL) as ckpt:
        n_embd = ckpt.tensors["token_embd.weight"].row_length
        residual = residual_subset(n_embd, n_embd // 3, seed=5)
        tokens = token_subset(ckpt.tensors["token_embd.weight"].n_rows, 50, seed=6)
        for name, info in ckpt.tensors.items():
            if not SketchBuilder.wants(info.role or ""):
                continue
            full = ckpt.read(name)
            part = TensorSketch(info.role or "", info.n_rows, info.row_length, residual, tokens)
            rows = full.reshape(info.n_rows, info.row_length)
            for start in range(0, info.n_rows, chunk_rows):  # torch chunks, as the streamed pass gives them
                part.add(start, torch.from_numpy(rows[start:start + chunk_rows]))
            builder = SketchBuilder(residual, tokens)
            builder.add(info.role or "", info.layer, part.parts())
            sketch = builder.finish()
            got = sketch.globals[info.role] if info.layer is None else sketch.layers[info.layer][info.role]
            want = _expected(info.role or "", full, residual, tokens)
            assert got.dtype == np.float32 and np.array_equal(got, want), name
            # read on its own (numpy chunks from the reader): the same slices
            builder.add(info.role or "", info.layer, sketch_tensor(ckpt, name, residual, tokens))
            again = builder.finish()
            assert np.array_equal(again.globals[info.role] if info.layer is None else again.layers[info.layer][info.role], want)


def test_a_writer_narrower_than_the_residual_keeps_the_rows_it_has() -> None:
    residual = np.array([1, 5, 9, 12])
    rows = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    part = TensorSketch("ffn_down", 10, 3, residual, np.zeros(0, dtype=np.int64))
    part.add(0, rows[:6])
    part.add(6, rows[6:])
    ((start, values),) = part.parts()
    assert start == 0 and np.array_equal(values, rows[[1, 5, 9]])
    with pytest.raises(ValueError, match="residual coordinate 12"):
        TensorSketch("ffn_up", 10, 3, residual, np.zeros(0, dtype=np.int64))
