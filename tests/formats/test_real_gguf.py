"""Every real GGUF in ../shared/data parses; quantized tensors dequantize like gguf-py."""
from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import gguf
import numpy as np
import pytest

from provenance.errors import CheckpointError, LimitExceeded
from provenance.formats import open_checkpoint
from provenance.tokenizer import summarize_tokenizer
from tests.conftest import QUANT_DIR, SHARED_DATA, VOCAB_DIR

REAL_GGUFS = sorted(p for p in SHARED_DATA.glob("*/*.gguf") if p.parent.name != "corrupted")
QUANTIZED = sorted(QUANT_DIR.glob("*.gguf"))


@cache
def oracle_reader(path: Path) -> gguf.GGUFReader:
    """gguf-py's reader, trusted only because these are known-good files (and slow: cached)."""
    return gguf.GGUFReader(path)


def test_real_data_is_present() -> None:
    assert len(REAL_GGUFS) >= 24 and len(QUANTIZED) >= 14


@pytest.mark.parametrize("path", REAL_GGUFS, ids=lambda p: p.name)
def test_real_gguf_parses_like_gguf_py(path: Path) -> None:
    oracle = oracle_reader(path)
    with open_checkpoint(path) as checkpoint:
        assert list(checkpoint.tensors) == [t.name for t in oracle.tensors]
        assert set(checkpoint.metadata) == {f.name for f in oracle.fields.values() if not f.name.startswith("GGUF.")}
        for tensor in oracle.tensors:
            info = checkpoint.info(tensor.name)
            assert info.shape == tuple(int(d) for d in reversed(tensor.shape.tolist()))
            assert info.dtype == tensor.tensor_type.name
            assert info.n_bytes == tensor.n_bytes
            assert info.offset == tensor.data_offset


def test_vocab_only_files_have_tokenizers() -> None:
    for path in sorted(VOCAB_DIR.glob("*.gguf")):
        with open_checkpoint(path) as checkpoint:
            assert len(checkpoint) == 0
            summary = summarize_tokenizer(checkpoint)
            tokens = checkpoint.metadata["tokenizer.ggml.tokens"]
            assert summary.vocab_size == len(tokens) > 1000
            oracle = oracle_reader(path).fields["tokenizer.ggml.tokens"]
            assert tokens.head(50) == [bytes(oracle.parts[i]).decode("utf-8", "replace") for i in oracle.data[:50]]


def test_token_list_hash_relations() -> None:
    def tokens_hash(name: str) -> str:
        with open_checkpoint(VOCAB_DIR / f"ggml-vocab-{name}.gguf") as checkpoint:
            return summarize_tokenizer(checkpoint).tokens_sha256

    # mpt's vocabulary equals gpt-neox's exactly (shared/data/README.md).
    assert tokens_hash("mpt") == tokens_hash("gpt-neox")
    assert tokens_hash("llama-spm") != tokens_hash("phi-3")


@pytest.mark.parametrize("path", QUANTIZED, ids=lambda p: p.name)
def test_dequantize_matches_gguf_py(path: Path) -> None:
    oracle = {t.name: t for t in oracle_reader(path).tensors}
    with open_checkpoint(path) as checkpoint:
        for name, info in checkpoint.tensors.items():
            tensor = oracle[name]
            expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(info.shape)
            got = checkpoint.read(name)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected)
            # Chunked reads agree with the whole read.
            rows = np.concatenate([chunk for _, chunk in checkpoint.iter_rows(name, chunk_bytes=4096)])
            np.testing.assert_array_equal(rows, got.reshape(info.n_rows, info.row_length))
            assert checkpoint.tensor_sha256(name) == hashlib.sha256(tensor.data.tobytes()).hexdigest()


def test_quant_mix_is_reported() -> None:
    with open_checkpoint(QUANT_DIR / "tiny-llama-Q4_K_M.gguf") as checkpoint:
        types = {info.dtype for info in checkpoint.tensors.values()}
    assert {"Q4_K", "Q6_K", "F32"} == types


@pytest.mark.parametrize("path", sorted((SHARED_DATA / "corrupted").glob("*.gguf")), ids=lambda p: p.name)
def test_corrupted_files_fail_cleanly(path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    error = info.value
    assert isinstance(error, LimitExceeded)
    assert error.field and error.offset is not None and str(path) in str(error)
    assert "\n" not in str(error)


def test_stories260k_llama2c_matches_its_gguf_conversion() -> None:
    with open_checkpoint(SHARED_DATA / "stories260K" / "stories260K.bin") as legacy, \
         open_checkpoint(QUANT_DIR / "stories260K-f32.gguf") as converted:
        assert legacy.format == "llama2c"
        shared = [n for n in legacy.keys() if n in converted]
        assert len(shared) >= 45
        for name in shared:
            np.testing.assert_array_equal(legacy.read(name), converted.read(name))
        assert sum(legacy.info(n).n_elements for n in legacy.keys() if "rope" not in n) == 260_032
