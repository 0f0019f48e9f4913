"""Split GGUF files opened as one model; canonical names and the Q/K permutation."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from provenance.errors import MalformedCheckpoint
from provenance.formats import open_checkpoint
from provenance.names.canonical import hf_to_canonical, layer_and_role
from provenance.names.qk_permute import gguf_to_hf_rows, hf_to_gguf_rows, llama_qk_row_order


def write_split(directory: Path, n_tensors: int = 5, per_split: int = 2) -> list[Path]:
    writer = gguf.GGUFWriter(directory / "m.gguf", "llama", split_max_tensors=per_split)
    writer.add_block_count(2)
    for i in range(n_tensors):
        writer.add_tensor(f"blk.{i % 2}.t{i}.weight", np.full((3, 32), i, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(directory.glob("m-*.gguf"))


def test_split_gguf_opens_as_one_model(tmp_path: Path) -> None:
    parts = write_split(tmp_path)
    assert len(parts) == 3
    for part in parts:  # any part opens the whole model
        with open_checkpoint(part) as checkpoint:
            assert checkpoint.format == "gguf-split"
            assert len(checkpoint) == 5 and len(checkpoint.files) == 3
            assert checkpoint.architecture.n_layer == 2
            for i in range(5):
                assert (checkpoint.read(f"blk.{i % 2}.t{i}.weight") == i).all()
            assert {info.file for info in checkpoint.tensors.values()} == {str(p) for p in parts}


def test_split_with_missing_part(tmp_path: Path) -> None:
    parts = write_split(tmp_path)
    parts[1].unlink()
    with pytest.raises(MalformedCheckpoint, match="missing"):
        open_checkpoint(parts[0])


def test_split_parts_renamed_out_of_order(tmp_path: Path) -> None:
    parts = write_split(tmp_path)
    swap = tmp_path / "swap"
    parts[0].rename(swap)
    parts[1].rename(parts[0])
    swap.rename(parts[1])
    with pytest.raises(MalformedCheckpoint, match=r"split.no"):
        open_checkpoint(parts[2])


def test_layer_and_role() -> None:
    assert layer_and_role("blk.12.ffn_down.weight") == (12, "ffn_down")
    assert layer_and_role("blk.0.attn_q.bias") == (0, "attn_q.bias")
    assert layer_and_role("token_embd.weight") == (None, "token_embd")
    assert layer_and_role("weird\nname") == (None, "weird\nname")


@pytest.mark.parametrize("hf, expected", [
    ("model.layers.7.self_attn.k_proj.weight", "blk.7.attn_k.weight"),
    ("model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight"),
    ("model.layers.0.post_attention_layernorm.weight", "blk.0.ffn_norm.weight"),
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("lm_head.weight", "output.weight"),
])
def test_hf_names_map_through_gguf_tensor_name_map(hf: str, expected: str) -> None:
    assert hf_to_canonical(hf, "llama", 8) == expected


def test_qk_permutation_is_llama_cpp_converter_formula() -> None:
    rng = np.random.default_rng(0)
    n_head, head_dim, n_in = 4, 8, 5
    weights = rng.standard_normal((n_head * head_dim, n_in))
    # The converter's own formula, written out independently here.
    expected = weights.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2).reshape(weights.shape)
    np.testing.assert_array_equal(hf_to_gguf_rows(weights, n_head), expected)
    np.testing.assert_array_equal(gguf_to_hf_rows(hf_to_gguf_rows(weights, n_head), n_head), weights)
    with pytest.raises(ValueError):
        llama_qk_row_order(30, 4)
