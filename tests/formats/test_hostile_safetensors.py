"""Hostile safetensors files and index.json files: clean errors, bounded time and memory."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from provenance.errors import CheckpointError, LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats import open_checkpoint
from tests.conftest import Bounded


def safetensors_bytes(header: dict | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def expect_failure(path: Path, error: type[CheckpointError] = CheckpointError, match: str | None = None) -> CheckpointError:
    with Bounded() as bound, pytest.raises(error) as info, open_checkpoint(path) as checkpoint:
        for name in checkpoint.keys():
            checkpoint.read(name)
    assert bound.seconds < 1.0 and bound.peak_bytes < 8 * 1024 * 1024
    assert "\n" not in str(info.value)
    if match:
        assert match in str(info.value), str(info.value)
    return info.value


def write(tmp_path: Path, data: bytes, name: str = "m.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}


def test_good_file_reads(tmp_path: Path) -> None:
    with open_checkpoint(write(tmp_path, safetensors_bytes(GOOD, bytes(24)))) as checkpoint:
        assert checkpoint.read("a").shape == (2, 2)


def test_trailing_bytes(tmp_path: Path) -> None:
    expect_failure(write(tmp_path, safetensors_bytes(GOOD, bytes(24) + b"<html>polyglot</html>")), MalformedCheckpoint, "trailing bytes")


def test_data_shorter_than_tensors(tmp_path: Path) -> None:
    expect_failure(write(tmp_path, safetensors_bytes(GOOD, bytes(20))), MalformedCheckpoint, "past the end")


def test_duplicate_json_keys(tmp_path: Path) -> None:
    header = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    expect_failure(write(tmp_path, safetensors_bytes(header, bytes(4))), MalformedCheckpoint, "duplicate JSON key")


def test_header_length_beyond_file(tmp_path: Path) -> None:
    expect_failure(write(tmp_path, struct.pack("<Q", 10_000) + b"{}"), MalformedCheckpoint, "past the end of the file")


def test_header_length_huge(tmp_path: Path) -> None:
    expect_failure(write(tmp_path, struct.pack("<Q", 2**63) + b"{}"), CheckpointError)


def test_header_over_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", 200 * 1024 * 1024) + b"{")
        handle.truncate(200 * 1024 * 1024 + 8)  # sparse: no disk used
    expect_failure(path, LimitExceeded, "cap")


def test_overlapping_offsets(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    expect_failure(write(tmp_path, safetensors_bytes(header, bytes(12))), MalformedCheckpoint, "overlaps")


def test_gap_between_tensors(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}
    expect_failure(write(tmp_path, safetensors_bytes(header, bytes(20))), MalformedCheckpoint, "gap")


def test_size_does_not_match_shape(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    expect_failure(write(tmp_path, safetensors_bytes(header, bytes(8))), MalformedCheckpoint, "needs 12")


def test_unknown_dtype(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}
    expect_failure(write(tmp_path, safetensors_bytes(header, bytes(16))), UnsupportedCheckpoint, "unknown dtype")


def test_negative_or_bogus_shape(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}
    expect_failure(write(tmp_path, safetensors_bytes(header, bytes(16))), MalformedCheckpoint, "expected an integer in [0, ")


def test_huge_shape_product(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}
    expect_failure(write(tmp_path, safetensors_bytes(header, bytes(16))), MalformedCheckpoint, "needs")


def test_not_json_object(tmp_path: Path) -> None:
    from provenance.formats.safetensors_reader import parse_safetensors_header

    path = write(tmp_path, safetensors_bytes(b"[1, 2]", b""))
    with pytest.raises(MalformedCheckpoint, match="expected an object, found list"):
        parse_safetensors_header(str(path))
    expect_failure(path, UnsupportedCheckpoint, "unrecognised format")


def test_deeply_nested_json(tmp_path: Path) -> None:
    header = b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    expect_failure(write(tmp_path, safetensors_bytes(header, b"")), MalformedCheckpoint)


def test_nan_in_header(tmp_path: Path) -> None:
    header = b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}'
    expect_failure(write(tmp_path, safetensors_bytes(header, bytes(4))), MalformedCheckpoint, "invalid JSON")


def test_metadata_must_be_strings(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": {"nested": 1}}}
    expect_failure(write(tmp_path, safetensors_bytes(header, b"")), MalformedCheckpoint, "__metadata__")


def make_sharded(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    save_file({"a": torch.zeros(4)}, directory / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(4)}, directory / "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def rewrite_index(directory: Path, weight_map: dict[str, str]) -> None:
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_baseline(tmp_path: Path) -> None:
    with open_checkpoint(make_sharded(tmp_path)) as checkpoint:
        assert checkpoint.read("b").tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("escape", ["../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors", "..", "sub/x.safetensors"])
def test_index_shard_path_escape(tmp_path: Path, escape: str) -> None:
    directory = make_sharded(tmp_path)
    rewrite_index(directory, {"a": "model-00001-of-00002.safetensors", "b": escape})
    expect_failure(directory, MalformedCheckpoint, "escapes")


def test_index_shard_symlink_escape(tmp_path: Path) -> None:
    directory = make_sharded(tmp_path)
    outside = tmp_path / "outside.safetensors"
    save_file({"b": torch.ones(4)}, outside)
    os.symlink(outside, directory / "link.safetensors")
    rewrite_index(directory, {"a": "model-00001-of-00002.safetensors", "b": "link.safetensors"})
    expect_failure(directory, MalformedCheckpoint, "outside the model directory")


def test_index_missing_shard(tmp_path: Path) -> None:
    directory = make_sharded(tmp_path)
    (directory / "model-00002-of-00002.safetensors").unlink()
    expect_failure(directory, MalformedCheckpoint, "missing")


def test_index_duplicate_tensor_across_shards(tmp_path: Path) -> None:
    directory = make_sharded(tmp_path)
    save_file({"b": torch.ones(4), "a": torch.ones(4)}, directory / "model-00002-of-00002.safetensors")
    expect_failure(directory, MalformedCheckpoint, "listed in shard")


def test_index_lists_tensor_in_no_shard(tmp_path: Path) -> None:
    directory = make_sharded(tmp_path)
    rewrite_index(directory, {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                              "c": "model-00002-of-00002.safetensors"})
    expect_failure(directory, MalformedCheckpoint, "in no shard")


def test_index_duplicate_keys(tmp_path: Path) -> None:
    directory = make_sharded(tmp_path)
    (directory / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "a": "model-00002-of-00002.safetensors"}}')
    expect_failure(directory, MalformedCheckpoint, "duplicate JSON key")
