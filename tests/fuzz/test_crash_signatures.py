"""The 14 crash signatures, the hang and the CLI replay problems of issue 15, each rebuilt
here from its description (the mutation fuzzer's inputs are not kept): every one is now a
clean :class:`ProvenanceError` naming file and field, read through the full read path
(:func:`tests.fuzz.targets.read_everything`) in bounded time and memory."""
from __future__ import annotations

import io
import json
import os
import pickle  # noqa: TID251 (writes a protocol-0 pickle for the detector; nothing is unpickled)
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from provenance.errors import (
    MalformedCheckpoint,
    PickleCheckpointRefused,
    ProvenanceError,
    UnsupportedCheckpoint,
)
from provenance.formats import open_checkpoint
from provenance.names.canonical import hf_to_canonical
from tests.conftest import Bounded
from tests.fuzz.targets import TINY_LLAMA, read_everything, tiny_llama_tensors
from tests.support.gguf_bytes import FLOAT32, GGUFBytes, gstr, kv_str, tensor_info


@pytest.fixture(autouse=True, scope="module")
def _warm() -> None:
    """Import the decoders once, outside the time bound (numba loads its compiled kernels)."""
    import provenance.codecs.registry
    import provenance.formats.rows  # noqa: F401


def refused(path: Path, error: type[ProvenanceError] = ProvenanceError, field: str | None = None) -> ProvenanceError:
    """The full read path refuses ``path`` with ``error`` (field ``field``), in < 2 s and < 64 MiB."""
    with Bounded() as bound, pytest.raises(error) as info:
        read_everything(path)
    assert bound.seconds < 2.0 and bound.peak_bytes < 64 * 1024 * 1024, (bound.seconds, bound.peak_bytes)
    assert "\n" not in str(info.value) and str(path.parent) in str(info.value)  # one line, naming a file of the input
    if field is not None:
        assert getattr(info.value, "field", None) == field, str(info.value)
    return info.value


def hf_folder(tmp_path: Path, config: object = TINY_LLAMA, tensors: dict[str, np.ndarray] | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(tensors if tensors is not None else tiny_llama_tensors(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def safetensors_file(path: Path, header: dict[str, object], data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# ----- TypeError in safetensors_reader.open_index: weight_map values that are lists ---------------
def test_1_index_weight_map_values_that_are_lists(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    os.rename(folder / "model.safetensors", folder / "model-00001-of-00001.safetensors")
    weight_map = {name: ["model-00001-of-00001.safetensors"] for name in tiny_llama_tensors()}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    error = refused(folder, MalformedCheckpoint)
    assert error.field.startswith("weight_map[") and "expected a string" in str(error)


# ----- TypeError in _validate_entry: dtype or offsets of the wrong JSON type ----------------------
@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, 32])
def test_2_safetensors_dtype_of_the_wrong_json_type(tmp_path: Path, dtype: object) -> None:
    path = safetensors_file(tmp_path / "m.safetensors", {"a": {"dtype": dtype, "shape": [4], "data_offsets": [0, 16]}}, bytes(16))
    refused(path, MalformedCheckpoint, "a.dtype")


@pytest.mark.parametrize("offsets", ["0,16", [0, "16"], {"begin": 0}, [0, 16.0], [0, 16, 32]])
def test_3_safetensors_offsets_of_the_wrong_json_type(tmp_path: Path, offsets: object) -> None:
    path = safetensors_file(tmp_path / "m.safetensors", {"a": {"dtype": "F32", "shape": [4], "data_offsets": offsets}}, bytes(16))
    assert refused(path, MalformedCheckpoint).field.startswith("a.data_offsets")


# ----- TypeError in SafetensorsCheckpoint.__init__: config.json a list or a number ---------------
def test_4_config_json_that_is_a_list(tmp_path: Path) -> None:
    error = refused(hf_folder(tmp_path, config=[["hidden_size", 16]]), MalformedCheckpoint, "config.json")
    assert "expected an object, found list" in str(error)


def test_5_config_json_that_is_a_number(tmp_path: Path) -> None:
    assert "found 42" in str(refused(hf_folder(tmp_path, config=42), MalformedCheckpoint, "config.json"))


# ----- TypeError in the tokenizer.json reader: added_tokens / merges / model.type -----------------
BPE = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}, "added_tokens": []}


def tokenizer_json(tmp_path: Path, **changes: object) -> Path:
    document = json.loads(json.dumps(BPE))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = document
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("added", [{"id": 2, "content": "<s>"}, [2, "<s>"], [{"id": "2", "content": "<s>"}],
                                   [{"id": 2, "content": ["<s>"]}], [{"content": "<s>"}]])
def test_6_tokenizer_added_tokens_of_the_wrong_type(tmp_path: Path, added: object) -> None:
    assert refused(tokenizer_json(tmp_path, added_tokens=added), MalformedCheckpoint).field.startswith("added_tokens")


@pytest.mark.parametrize("merges", [{"a": "b"}, [1], [["a"]], [["a", 2]], "a b"])
def test_7_tokenizer_merges_of_the_wrong_type(tmp_path: Path, merges: object) -> None:
    assert refused(tokenizer_json(tmp_path, model__merges=merges), MalformedCheckpoint).field.startswith("model.merges")


@pytest.mark.parametrize("kind", [["BPE"], 3, {"name": "BPE"}, True])
def test_8_tokenizer_model_type_of_the_wrong_type(tmp_path: Path, kind: object) -> None:
    refused(tokenizer_json(tmp_path, model__type=kind), MalformedCheckpoint, "model.type")


# ----- ZeroDivisionError in Checkpoint.iter_rows: zero-sized rows or heads ------------------------
@pytest.mark.parametrize("shape", [(0, 16), (16, 0), (0, 0)])
def test_9_zero_sized_rows_or_heads(tmp_path: Path, shape: tuple[int, int]) -> None:
    tensors = tiny_llama_tensors()
    tensors["model.layers.0.self_attn.q_proj.weight"] = np.zeros(shape, np.float16)
    folder = hf_folder(tmp_path, tensors=tensors)
    read_everything(folder)  # an empty tensor is valid safetensors: read, not refused
    with open_checkpoint(folder) as checkpoint:
        info = checkpoint.info("blk.0.attn_q.weight")
        assert info.qk_heads is None and info.n_elements == 0
        assert [rows.shape for _, rows in checkpoint.iter_rows(info.name)] == []
        assert checkpoint.read(info.name).shape == shape


# ----- ValueError in qk_permute._order: negative or zero head counts from config ------------------
@pytest.mark.parametrize("key", ["num_attention_heads", "num_key_value_heads"])
@pytest.mark.parametrize("heads", [-2, 0, 3.5, "4", 2**40])
def test_10_negative_or_zero_head_counts_from_config(tmp_path: Path, key: str, heads: object) -> None:
    refused(hf_folder(tmp_path, config=dict(TINY_LLAMA, **{key: heads})), MalformedCheckpoint, key)


# ----- ValueError / OverflowError in names.arch._int: NaN or infinity in a float-typed GGUF key ---
def kv_f32(key: str, value: float) -> bytes:
    return gstr(key) + struct.pack("<If", FLOAT32, value)


@pytest.mark.parametrize("key", ["llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                                 "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_11_nan_or_infinity_in_a_float_typed_architecture_key(tmp_path: Path, key: str, value: float) -> None:
    model = GGUFBytes(kvs=[kv_str("general.architecture", "llama"), kv_f32(key, value)],
                      infos=[tensor_info("a.weight", [8], 0, 0)], data=bytes(32))
    path = tmp_path / "m.gguf"
    path.write_bytes(model.build())
    error = refused(path, MalformedCheckpoint, key)
    assert error.offset == 24 + len(kv_str("general.architecture", "llama"))  # where the key/value record starts


# ----- NotImplementedError from the dequantizer: a tensor retyped to a removed or unknown type ----
@pytest.mark.parametrize("type_id", [4, 5, 99, 2**31])
def test_12a_tensor_retyped_to_a_removed_or_unknown_ggml_type(tmp_path: Path, type_id: int) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(GGUFBytes(kvs=[kv_str("general.architecture", "llama")], infos=[tensor_info("a.weight", [32], type_id, 0)],
                               data=bytes(64)).build())
    assert "unknown ggml type" in str(refused(path, MalformedCheckpoint, "tensor a.weight type"))


def test_12b_tensor_retyped_to_a_type_no_codec_decodes(tmp_path: Path) -> None:
    """Q8_K (15) is a known type with no dequantizer (an activation format): the tensor is
    listed and hashed, and asking for its rows is an input problem, not NotImplementedError."""
    path = tmp_path / "m.gguf"
    path.write_bytes(GGUFBytes(kvs=[kv_str("general.architecture", "llama")], infos=[tensor_info("a.weight", [256], 15, 0)],
                               data=bytes(292)).build())
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.info("a.weight").dtype == "Q8_K" and len(checkpoint.tensor_sha256("a.weight")) == 64
    error = refused(path, UnsupportedCheckpoint, "a.weight")
    assert "Q8_K values cannot be decoded" in str(error) and error.offset is not None


# ----- NotImplementedError from to_float32: fp6 and other raw-only dtypes as float32 --------------
@pytest.mark.parametrize("dtype", ["F6_E2M3", "F6_E3M2"])
def test_13_raw_only_dtype_requested_as_float32(tmp_path: Path, dtype: str) -> None:
    header = {"a": {"dtype": dtype, "shape": [2, 8], "data_offsets": [0, 12]},
              "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}
    path = safetensors_file(tmp_path / "m.safetensors", header, bytes(range(16)))
    with open_checkpoint(path) as checkpoint:
        # 6-bit rows are whole bytes here (8 values in 6 bytes): raw rows never run into the next tensor
        assert checkpoint.raw_rows("a").tobytes() == bytes(range(12))
        assert checkpoint.raw_rows("a", 1, 2).tobytes() == bytes(range(6, 12))
    refused(path, UnsupportedCheckpoint, "a")


def test_13b_six_bit_rows_that_are_not_whole_bytes_are_refused(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F6_E2M3", "shape": [4, 2], "data_offsets": [0, 6]}}
    refused(safetensors_file(tmp_path / "m.safetensors", header, bytes(6)), UnsupportedCheckpoint, "a")


# ----- NotImplementedError in detect._is_pickle: zipfile's "zip file version" on a crafted zip -----
def crafted_zip(member: str, version: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, b"\x80\x02}q\x00.")
    data = bytearray(buffer.getvalue())
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 6, version)  # "version needed to extract"
    return bytes(data)


def test_14_crafted_zip_version_in_pickle_detection(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(crafted_zip("archive/data.pkl", 99))
    with pytest.raises(NotImplementedError):  # what zipfile does with it
        zipfile.ZipFile(path)
    refused(path, PickleCheckpointRefused)
    path.write_bytes(crafted_zip("archive/readme.txt", 99))
    assert "unrecognised format" in str(refused(path, UnsupportedCheckpoint))


# ----- the hang: work proportional to a claimed count ----------------------------------------------
@pytest.mark.parametrize("layers", [1_000_000, 60_000, 2**63])
def test_hang_config_claiming_a_million_layers(tmp_path: Path, layers: int) -> None:
    error = refused(hf_folder(tmp_path, config=dict(TINY_LLAMA, num_hidden_layers=layers)), MalformedCheckpoint)
    assert "num_hidden_layers" in error.field


def test_hang_naming_a_high_layer_costs_what_layer_0_costs() -> None:
    """Names are mapped to llama.cpp's block by block, not through a table sized by the
    claimed layer count (~1 ms and 270 entries per layer): layer 65535 of 65536 is as cheap
    as layer 0 of 1."""
    with Bounded() as bound:
        assert hf_to_canonical("model.layers.65535.self_attn.q_proj.weight", "llama", 65536) == "blk.65535.attn_q.weight"
        assert hf_to_canonical("model.layers.3.mlp.down_proj.weight", "llama", 3) is None  # beyond the claimed layers
    assert bound.seconds < 0.5


# ----- protocol-0 pickles are pickles -------------------------------------------------------------
@pytest.mark.parametrize("protocol", [0, 1])
def test_old_protocol_pickle_is_called_a_pickle(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"layer.weight": [1.0, 2.0], "step": 3}, protocol=protocol))
    refused(path, PickleCheckpointRefused)


def test_text_that_opens_like_a_pickle_is_not_one(tmp_path: Path) -> None:
    path = tmp_path / "NOTICE"
    path.write_text("(c) 2024 The Authors. All rights reserved.\nLicensed under the MIT license.\n")
    assert "unrecognised format" in str(refused(path, UnsupportedCheckpoint))
