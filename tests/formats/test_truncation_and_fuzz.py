"""Truncation at every byte and random mutation: a reader either reads a consistent file or
raises a CheckpointError (never another exception, never a hang)."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from provenance.errors import CheckpointError
from provenance.formats import open_checkpoint
from tests.conftest import QUANT_DIR


def small_real_gguf(path: Path) -> Path:
    """Written by the gguf package's own writer: strings, arrays, f32/f16 and Q8_0 tensors."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny")
    writer.add_block_count(1)
    writer.add_token_list(["<unk>", "<s>", "</s>", "▁a", "▁b"])
    writer.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0])
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(32, np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.standard_normal((4, 32)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.ffn_up.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_everything(path: Path) -> dict[str, np.ndarray]:
    with open_checkpoint(path) as checkpoint:
        for name in checkpoint.keys():
            checkpoint.tensor_sha256(name)
        return {name: checkpoint.read(name) for name in checkpoint.keys()}


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_real_gguf(tmp_path_factory.mktemp("t") / "small.gguf")


@pytest.fixture(scope="module")
def safetensors_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("t") / "small.safetensors"
    save_file({"w": torch.randn(3, 8), "b": torch.randn(8).half()}, path, metadata={"format": "pt"})
    return path


def test_gguf_truncated_at_every_byte(gguf_file: Path, tmp_path: Path) -> None:
    data = gguf_file.read_bytes()
    full = read_everything(gguf_file)
    with open_checkpoint(gguf_file) as checkpoint:
        data_end = checkpoint.files[0].data_end
    cut_path = tmp_path / "cut.gguf"
    failures = 0
    for cut in range(len(data)):
        cut_path.write_bytes(data[:cut])
        try:
            got = read_everything(cut_path)
        except CheckpointError as exc:
            assert "\n" not in str(exc)
            failures += 1
            continue
        # Only trailing padding may be cut from a readable file.
        assert cut >= data_end, f"truncation at {cut} was accepted"
        assert got.keys() == full.keys() and all(np.array_equal(got[k], full[k]) for k in full)
    assert failures >= data_end


def test_real_gguf_truncated_sweep() -> None:
    """stories260K-Q8_0 (llama.cpp output): every byte of the header, then a stride through the data."""
    import tempfile

    source = QUANT_DIR / "stories260K-Q8_0.gguf"
    data = source.read_bytes()
    with open_checkpoint(source) as checkpoint:
        data_start = checkpoint.files[0].data_start
    cuts = list(range(0, data_start + 64)) + list(range(data_start + 64, len(data), 997))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut.gguf"
        for cut in cuts:
            path.write_bytes(data[:cut])
            with pytest.raises(CheckpointError):
                read_everything(path)


def test_safetensors_truncated_at_every_byte(safetensors_file: Path, tmp_path: Path) -> None:
    data = safetensors_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            read_everything(path)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_gguf_mutations(gguf_file: Path, tmp_path: Path, edits: list[tuple[int, int]]) -> None:
    path = tmp_path / "fuzz.gguf"
    # Concentrate edits on the header, where the parser's decisions are.
    data = gguf_file.read_bytes()
    header_edits = [(p % 400, v) for p, v in edits]
    path.write_bytes(_mutate(data, header_edits))
    try:
        read_everything(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_safetensors_mutations(safetensors_file: Path, tmp_path: Path, edits: list[tuple[int, int]]) -> None:
    path = tmp_path / "fuzz.safetensors"
    data = safetensors_file.read_bytes()
    path.write_bytes(_mutate(data, [(p % 200, v) for p, v in edits]))
    try:
        read_everything(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
