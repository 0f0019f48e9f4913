"""Round trips through the real writers: transformers save_pretrained, safetensors, llama.cpp's converter."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from provenance.errors import PickleCheckpointRefused
from provenance.formats import open_checkpoint
from provenance.names.qk_permute import hf_to_gguf_rows


def hf_state(directory: Path) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update({k: v.float().numpy() for k, v in load_file(file).items()})
    return state


def expected_canonical(directory: Path, stored_name: str, value: np.ndarray) -> np.ndarray:
    config = json.loads((directory / "config.json").read_text())
    if stored_name.endswith("q_proj.weight"):
        return hf_to_gguf_rows(value, config["num_attention_heads"])
    if stored_name.endswith("k_proj.weight"):
        return hf_to_gguf_rows(value, config["num_key_value_heads"])
    return value


@pytest.mark.parametrize("fixture", ["hf_llama", "hf_mistral", "hf_llama_sharded"])
def test_save_pretrained_round_trip(fixture: str, request: pytest.FixtureRequest) -> None:
    directory: Path = request.getfixturevalue(fixture)
    state = hf_state(directory)
    with open_checkpoint(directory) as checkpoint:
        assert checkpoint.format == "hf-directory"
        assert checkpoint.architecture.arch == "llama" and checkpoint.architecture.n_layer == 2
        assert {info.stored_name for info in checkpoint.tensors.values()} == set(state)
        if fixture == "hf_llama_sharded":
            assert len(checkpoint.files) > 1
        for name, info in checkpoint.tensors.items():
            assert not name.startswith("model."), f"{info.stored_name} has no canonical name"
            got = checkpoint.read(name)
            np.testing.assert_array_equal(got, expected_canonical(directory, info.stored_name, state[info.stored_name]))
        assert checkpoint.info("blk.1.attn_q.weight").stored_name == "model.layers.1.self_attn.q_proj.weight"
        assert checkpoint.info("blk.0.attn_k.weight").qk_heads == 4


def test_index_json_opens_directly(hf_llama_sharded: Path) -> None:
    with open_checkpoint(hf_llama_sharded / "model.safetensors.index.json") as checkpoint:
        assert checkpoint.format == "safetensors-sharded" and len(checkpoint.files) > 1


def test_q_proj_rows_read_in_chunks_match_whole(hf_llama: Path) -> None:
    with open_checkpoint(hf_llama) as checkpoint:
        whole = checkpoint.read("blk.0.attn_q.weight")
        for chunk_bytes in (1, 256 * 7, 4096):
            parts = np.concatenate([rows for _, rows in checkpoint.iter_rows("blk.0.attn_q.weight", chunk_bytes)])
            np.testing.assert_array_equal(parts, whole)
        np.testing.assert_array_equal(checkpoint.read_rows("blk.0.attn_q.weight", 3, 11), whole[3:11])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                   torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.int32])
def test_every_dtype_reads_like_torch(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    value = (torch.randn(12, 32) * 4).to(dtype)
    save_file({"w": value, "v": value[0].clone()}, tmp_path / "t.safetensors")
    with open_checkpoint(tmp_path / "t.safetensors") as checkpoint:
        np.testing.assert_array_equal(checkpoint.read("w"), value.float().numpy())
        np.testing.assert_array_equal(checkpoint.read("v"), value[0].float().numpy())


def test_pickle_checkpoint_refused_without_loading(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # would create the marker file if ever unpickled
            return (open, (str(marker), "w"))

    torch.save({"w": torch.zeros(2), "x": Exploit()}, tmp_path / "pytorch_model.bin")
    for target in (tmp_path / "pytorch_model.bin", tmp_path):
        with pytest.raises(PickleCheckpointRefused, match="never loaded"):
            open_checkpoint(target)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(PickleCheckpointRefused):
        open_checkpoint(legacy)
    assert not marker.exists()


@pytest.mark.parametrize("fixture", ["hf_llama_spm", "hf_mistral_spm"])
def test_llama_cpp_converter_round_trip(fixture: str, request: pytest.FixtureRequest, converter, tmp_path: Path) -> None:
    """HF -> GGUF by llama.cpp's own converter: canonical names agree and, with the Q/K
    permutation applied on the HF side, every tensor is bit-identical."""
    directory: Path = request.getfixturevalue(fixture)
    gguf_path = converter(directory, tmp_path / "model.gguf")
    with open_checkpoint(gguf_path) as converted, open_checkpoint(directory) as original:
        assert set(converted.keys()) == set(original.keys())
        assert converted.architecture.n_head == original.architecture.n_head == 8
        assert converted.architecture.n_head_kv == original.architecture.n_head_kv == 4
        for name in converted.keys():
            np.testing.assert_array_equal(converted.read(name), original.read(name), err_msg=name)
        # Without the permutation, attention projections would not match.
        raw_q = load_file(directory / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"].numpy()
        assert not np.array_equal(raw_q, converted.read("blk.0.attn_q.weight"))


def test_tokenizer_hash_agrees_across_formats(hf_llama_spm: Path, converter, tmp_path: Path) -> None:
    """transformers' tokenizer.json and llama.cpp's GGUF token array of the same Llama 2
    tokenizer give the same token-list hash (and equal the shipped llama-spm vocab GGUF's)."""
    from transformers import LlamaTokenizer

    from provenance.tokenizer import summarize_tokenizer
    from tests.conftest import VOCAB_DIR

    model_dir = tmp_path / "with-tokenizer"
    shutil.copytree(hf_llama_spm, model_dir)
    LlamaTokenizer.from_pretrained(model_dir).save_pretrained(model_dir)
    gguf_path = converter(model_dir, tmp_path / "m.gguf")
    with open_checkpoint(model_dir) as hf, open_checkpoint(gguf_path) as gg, \
         open_checkpoint(VOCAB_DIR / "ggml-vocab-llama-spm.gguf") as vocab:
        summaries = [summarize_tokenizer(c) for c in (hf, gg, vocab)]
    assert [s.source for s in summaries] == ["tokenizer.json", "gguf", "gguf"]
    assert {s.vocab_size for s in summaries} == {32000}
    assert len({s.tokens_sha256 for s in summaries}) == 1


def _raw_safetensors(path: Path, dtype: str, shape: list[int], data: bytes) -> Path:
    import struct as _struct

    header = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(_struct.pack("<Q", len(header)) + header + data)
    return path


def test_f8_e8m0_scales(tmp_path: Path) -> None:
    path = _raw_safetensors(tmp_path / "e8m0.safetensors", "F8_E8M0", [4], bytes([127, 128, 126, 0]))
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.read("t").tolist() == [1.0, 2.0, 0.5, 2.0**-127]


def test_f4_e2m1_packed_two_per_byte(tmp_path: Path) -> None:
    # Low nibble first: 0x21 -> (0.5, 1.0); 0xF7 -> (6.0, -6.0).
    path = _raw_safetensors(tmp_path / "f4.safetensors", "F4", [2, 2], bytes([0x21, 0xF7]))
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.read("t").tolist() == [[0.5, 1.0], [6.0, -6.0]]
