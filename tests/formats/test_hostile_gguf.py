"""Hostile GGUF headers, each built with struct: every one must fail cleanly, fast and in bounded memory."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from provenance.errors import CheckpointError, LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats import open_checkpoint
from tests.conftest import Bounded
from tests.support.gguf_bytes import ARRAY, STRING, UINT32, gstr, kv_str, kv_u32, tensor_info, valid_model

HUGE = 2**63


def expect_clean_failure(tmp_path: Path, data: bytes, error: type[CheckpointError] = CheckpointError,
                         match: str | None = None) -> CheckpointError:
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    with Bounded() as bound, pytest.raises(error) as info, open_checkpoint(path) as checkpoint:
        for name in checkpoint.keys():
            checkpoint.read(name)
    assert bound.seconds < 1.0, f"took {bound.seconds:.2f} s"
    assert bound.peak_bytes < 8 * 1024 * 1024, f"allocated {bound.peak_bytes} bytes"
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if match:
        assert match in message, message
    return info.value


def test_baseline_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(valid_model().build())
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.info("a.weight").shape == (2, 8)
        assert checkpoint.read("a.weight").shape == (2, 8)


def test_the_43_byte_huge_array(tmp_path: Path) -> None:
    # The classic: a tiny file claiming an array of 2^63 items (hangs the released gguf reader).
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gstr("k") + struct.pack("<IIQ", ARRAY, UINT32, HUGE - 1)
    assert len(data) < 50
    error = expect_clean_failure(tmp_path, data, LimitExceeded, "count")
    assert error.offset == 41 and error.field == "k count"


def test_huge_tensor_count(tmp_path: Path) -> None:
    model = valid_model()
    model.n_tensors = HUGE
    expect_clean_failure(tmp_path, model.build(), LimitExceeded, "tensor_count")


def test_huge_kv_count(tmp_path: Path) -> None:
    model = valid_model()
    model.n_kv = HUGE - 1
    expect_clean_failure(tmp_path, model.build(), LimitExceeded, "metadata_kv_count")


def test_kv_count_beyond_file(tmp_path: Path) -> None:
    model = valid_model()
    model.n_kv = 1000
    expect_clean_failure(tmp_path, model.build(), LimitExceeded, "cannot fit")


def test_huge_key_length(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.insert(0, struct.pack("<Q", HUGE) + b"key")
    expect_clean_failure(tmp_path, model.build(), LimitExceeded, "string length")


def test_huge_string_value_length(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(gstr("general.name") + struct.pack("<IQ", STRING, HUGE) + b"abc")
    expect_clean_failure(tmp_path, model.build(), LimitExceeded, "string length")


def test_string_value_past_eof(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(gstr("general.name") + struct.pack("<IQ", STRING, 10_000) + b"abc")
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "truncated")


def test_huge_array_length(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, HUGE))
    expect_clean_failure(tmp_path, model.build(), LimitExceeded, "count")


def test_huge_string_in_array(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, STRING, 2) + gstr("a") + struct.pack("<Q", HUGE))
    expect_clean_failure(tmp_path, model.build(), LimitExceeded, "tokenizer.ggml.tokens[1]")


def test_nested_arrays(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(gstr("nested") + struct.pack("<IIQ", ARRAY, ARRAY, 1) + struct.pack("<IQ", UINT32, 1) + b"\0" * 4)
    expect_clean_failure(tmp_path, model.build(), UnsupportedCheckpoint, "nested arrays")


def test_unknown_value_type(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(gstr("odd") + struct.pack("<I", 99) + b"\0" * 8)
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "unknown value type 99")


def test_bool_other_than_0_or_1(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(gstr("flag") + struct.pack("<IB", 7, 2))
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "bool")


def test_invalid_utf8_key(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(gstr(b"bad\xff\xfekey") + struct.pack("<II", UINT32, 1))
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "UTF-8")


def test_more_than_four_dims(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [1, 1, 1, 1, 8], 0, 64)
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "5 dimensions")


def test_zero_dims(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [], 0, 64)
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "0 dimensions")


def test_zero_dimension(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [8, 0], 0, 64)
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "dimension 1 is 0")


def test_negative_dimension(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [8, 2**64 - 1], 0, 64)  # -1 as int64
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "dimension 1")


def test_element_count_overflow(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [2**20, 2**20, 2**20, 2**20], 0, 64)
    expect_clean_failure(tmp_path, model.build(), LimitExceeded, "overflows")


def test_huge_tensor_past_eof(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [2**20, 2**20], 0, 64)
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "past the end of the file")


def test_unknown_ggml_type(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [8], 4, 64)  # 4 and 5 are retired Q4_2/Q4_3
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "unknown ggml type 4")


def test_row_not_multiple_of_block(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [40], 8, 64)  # Q8_0 blocks of 32
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "block size 32")


@pytest.mark.parametrize("alignment", [0, 3, 48, 2**31])
def test_alignment_not_power_of_two(tmp_path: Path, alignment: int) -> None:
    model = valid_model()
    model.kvs.append(kv_u32("general.alignment", alignment))
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "alignment")


def test_alignment_wrong_type(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(kv_str("general.alignment", "32"))
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "alignment")


def test_tensor_offsets_out_of_order(tmp_path: Path) -> None:
    model = valid_model()
    model.infos = [tensor_info("b.weight", [8], 0, 64), tensor_info("a.weight", [8, 2], 0, 0)]
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "expected 0")


def test_tensor_offsets_overlapping(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [8], 0, 32)
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "expected 64")


def test_tensor_offset_unaligned(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("b.weight", [8], 0, 65)
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "expected 64")


def test_tensor_offset_past_eof(tmp_path: Path) -> None:
    model = valid_model()
    model.data = model.data[:80]
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "past the end of the file")


def test_duplicate_keys(tmp_path: Path) -> None:
    model = valid_model()
    model.kvs.append(kv_str("general.architecture", "gpt2"))
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "duplicate metadata key")


def test_duplicate_tensor_names(tmp_path: Path) -> None:
    model = valid_model()
    model.infos[1] = tensor_info("a.weight", [8], 0, 64)
    expect_clean_failure(tmp_path, model.build(), MalformedCheckpoint, "duplicate tensor name")


@pytest.mark.parametrize("version", [1, 4, 0xFFFFFFFF])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    model = valid_model()
    model.version = version
    expect_clean_failure(tmp_path, model.build(), UnsupportedCheckpoint, "version")


def test_big_endian_gguf(tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    expect_clean_failure(tmp_path, data, UnsupportedCheckpoint, "big-endian")


def test_empty_file(tmp_path: Path) -> None:
    expect_clean_failure(tmp_path, b"", MalformedCheckpoint, "empty file")


def test_magic_only(tmp_path: Path) -> None:
    expect_clean_failure(tmp_path, b"GGUF", MalformedCheckpoint, "truncated")
