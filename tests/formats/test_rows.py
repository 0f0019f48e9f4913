"""The reader interface's row paths: reused and caller buffers, gathers, sampled blocks,
HF q/k permutation on read, and the one dtype table, on real files."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from provenance.errors import MalformedCheckpoint
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint
from provenance.formats.dtypes import STORAGE_TYPES, element_bytes, numpy_dtype, torch_dtype
from provenance.names.qk_permute import hf_to_gguf_rows
from tests.conftest import QUANT_DIR

REAL = sorted(QUANT_DIR.glob("tiny-llama-*.gguf")) + [QUANT_DIR / "stories260K-Q8_0.gguf"]


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_row_reader_equals_read_rows_in_any_buffer(path: Path) -> None:
    """Every stored type of the real llama.cpp files: chunks into the reader's buffer, a
    reused numpy buffer and a torch buffer all equal the whole-tensor read."""
    with open_checkpoint(path) as ckpt:
        for name in list(ckpt.tensors)[:6]:
            whole = ckpt.read_rows(name)
            info = ckpt.info(name)
            reader = ckpt.row_reader(name, max_rows=7)
            buf_np = np.full((7, info.row_length), np.nan, np.float32)
            buf_t = torch.full((7, info.row_length), float("nan"))
            for a in range(0, info.n_rows, 7):
                b = min(info.n_rows, a + 7)
                assert np.array_equal(reader.read(a, b).numpy(), whole[a:b]), name
                assert reader.read_into(a, b, buf_np[: b - a]) is not None
                assert np.array_equal(buf_np[: b - a], whole[a:b])
                reader.read_into(a, b, buf_t[: b - a])
                assert np.array_equal(buf_t[: b - a].numpy(), whole[a:b])
                assert np.array_equal(reader.raw(a, b), ckpt.raw_rows(name, a, b))
            assert np.array_equal(reader.read_all().numpy(), whole)
            rows = np.array([info.n_rows - 1, 0, 3, 4, 5, 2, 0]) % info.n_rows
            assert np.array_equal(reader.gather(rows).numpy(), whole[rows])


def test_raw_after_read_costs_no_second_read(monkeypatch: pytest.MonkeyPatch) -> None:
    with open_checkpoint(QUANT_DIR / "tiny-llama-Q4_K_M.gguf") as ckpt:
        reader = ckpt.row_reader("blk.0.ffn_down.weight", 16)
        reads: list[int] = []
        original = Checkpoint.pread_into

        def counting(self: Checkpoint, path: str, buffer: memoryview, offset: int) -> None:
            reads.append(len(buffer))
            original(self, path, buffer, offset)

        monkeypatch.setattr(Checkpoint, "pread_into", counting)
        reader.read(16, 32)
        reader.raw(16, 32)
        assert len(reads) == 1
        reader.raw(0, 16)
        assert len(reads) == 2


def test_hf_qk_rows_are_permuted_on_every_path(hf_llama: Path) -> None:
    """q/k of a save_pretrained model: chunks with boundaries inside heads, gathers and
    sampled blocks all see llama.cpp's row order."""
    from safetensors.numpy import load_file

    stored = load_file(hf_llama / "model.safetensors")["model.layers.1.self_attn.k_proj.weight"]
    with open_checkpoint(hf_llama) as ckpt:
        name = "blk.1.attn_k.weight"
        info = ckpt.info(name)
        assert info.qk_heads == 4
        canonical = hf_to_gguf_rows(stored, 4)
        reader = ckpt.row_reader(name, 5)
        got = np.concatenate([reader.read(a, min(info.n_rows, a + 5)).numpy().copy() for a in range(0, info.n_rows, 5)])
        assert np.array_equal(got, canonical) and not np.array_equal(canonical, stored)
        assert np.array_equal(ckpt.read_rows(name, 3, 29), canonical[3:29])
        rows = np.array([31, 1, 8, 9, 17])
        assert np.array_equal(reader.gather(rows).numpy(), canonical[rows])
        seen: list[tuple[str, int, int]] = []
        blocks = ckpt.read_blocks(name, rows, np.array([0, 5, 60, 2, 10]), 4, observe=lambda *a: seen.append(a))
        for i, (r, c) in enumerate(zip(rows, [0, 5, 60, 2, 10], strict=True)):
            assert np.array_equal(blocks[i], canonical[r, c : c + 4])
        assert len(seen) == 5 and all(n == 16 and p == info.file for p, _, n in seen)
        flat = np.array([0, 64 * 9 + 3, 64 * 31 + 63, 5])
        assert np.array_equal(ckpt.read_elements(name, flat), canonical.reshape(-1)[flat])


def test_sampled_blocks_of_a_quantized_tensor() -> None:
    with open_checkpoint(QUANT_DIR / "tiny-llama-Q4_K_M.gguf") as ckpt:
        name = "blk.0.attn_q.weight"
        whole = ckpt.read_rows(name)
        seen: list[tuple[str, int, int]] = []
        got = ckpt.read_blocks(name, np.array([5, 200]), np.array([0, 0]), 1, observe=lambda *a: seen.append(a))
        assert np.array_equal(got, whole[[5, 200], :256])
        info = ckpt.info(name)
        assert [o for _, o, _ in seen] == [info.offset + 5 * info.row_bytes, info.offset + 200 * info.row_bytes]
        assert {n for _, _, n in seen} == {info.block_bytes}
        with pytest.raises(IndexError):
            ckpt.read_blocks(name, np.array([0]), np.array([0]), 2)  # a row of 256 holds 1 block


def test_bad_buffers_and_ranges_are_refused() -> None:
    with open_checkpoint(QUANT_DIR / "tiny-llama-f16.gguf") as ckpt:
        reader = ckpt.row_reader("blk.0.attn_q.weight", 4)
        for bad in (np.zeros((4, 256), np.float64), np.zeros((3, 256), np.float32), np.zeros((4, 512), np.float32)[:, ::2],
                    torch.zeros((4, 256), dtype=torch.float16)):
            with pytest.raises(ValueError, match="output buffer"):
                reader.read_into(0, 4, bad)
        frozen = np.zeros((4, 256), np.float32)
        frozen.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            reader.read_into(0, 4, frozen)
        with pytest.raises(IndexError):
            reader.read(250, 257)
        with pytest.raises(IndexError):
            ckpt.read_rows("blk.0.attn_q.weight", 5, 4)


def test_a_file_that_shrinks_after_open_is_a_short_read(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    shutil.copy(QUANT_DIR / "tiny-llama-f16.gguf", path)
    with open_checkpoint(path) as ckpt:
        name = list(ckpt.tensors)[-1]
        os.truncate(path, ckpt.info(name).offset + 10)
        with pytest.raises(MalformedCheckpoint, match="short read"):
            ckpt.row_reader(name).read(0, 1)


def test_reader_threads_share_one_checkpoint() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with open_checkpoint(QUANT_DIR / "tiny-llama-Q6_K.gguf") as ckpt:
        names = list(ckpt.tensors)
        expected = {n: ckpt.read_rows(n) for n in names}

    with open_checkpoint(QUANT_DIR / "tiny-llama-Q6_K.gguf") as ckpt:  # fresh: no descriptor opened yet
        def stream(name: str) -> bool:
            reader = ckpt.row_reader(name, 3)
            return all(np.array_equal(reader.read(a, min(reader.info.n_rows, a + 3)).numpy(), expected[name][a:a + 3])
                       for a in range(0, reader.info.n_rows, 3))

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(stream, names))
        assert len(ckpt._files) == 1


# ----- the dtype table ---------------------------------------------------------------------
TORCH_TYPES = [name for name, spec in STORAGE_TYPES.items() if spec.torch and torch_dtype(name) is not None]


@pytest.mark.parametrize("name", TORCH_TYPES)
def test_every_torch_storage_type_decodes_like_torch(name: str, tmp_path: Path) -> None:
    """A tensor written by safetensors in each type reads back as torch's own float32 cast."""
    dtype = torch_dtype(name)
    assert dtype is not None
    source = torch.linspace(-3, 3, 48).reshape(6, 8)
    value = (source > 0) if dtype == torch.bool else source.abs().to(dtype) if name.startswith("U") else source.to(dtype)
    save_file({"w": value}, tmp_path / "t.safetensors")
    with open_checkpoint(tmp_path / "t.safetensors") as ckpt:
        info = ckpt.info("w")
        assert info.n_bytes == 48 * element_bytes(name) and info.dtype == name
        expected = (value.real if value.is_complex() else value).to(torch.float32).numpy()
        assert np.array_equal(ckpt.read_rows("w"), expected, equal_nan=True)
    spec = STORAGE_TYPES[name]
    if spec.numpy:
        assert numpy_dtype(name).itemsize * 8 == spec.bits


def test_permuted_reads_longer_than_one_scatter(tmp_path: Path) -> None:
    """A q_proj of 2304 rows: whole-tensor and odd chunks need several scattering reads each."""
    import json

    rng = np.random.default_rng(4)
    stored = rng.standard_normal((2304, 8)).astype(np.float32)
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.from_numpy(stored).half()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                      "hidden_size": 8, "num_attention_heads": 3, "num_hidden_layers": 1}))
    canonical = hf_to_gguf_rows(stored.astype(np.float16).astype(np.float32), 3)
    with open_checkpoint(tmp_path) as ckpt:
        assert ckpt.info("blk.0.attn_q.weight").qk_heads == 3
        assert np.array_equal(ckpt.read_rows("blk.0.attn_q.weight"), canonical)
        reader = ckpt.row_reader("blk.0.attn_q.weight", 1100)
        for a, b in [(0, 1100), (1100, 2200), (2200, 2304), (5, 6), (767, 1537)]:
            assert np.array_equal(reader.read(a, b).numpy(), canonical[a:b]), (a, b)
        assert np.array_equal(reader.raw(0, 3).view(np.float16).astype(np.float32), stored[:3].astype(np.float16).astype(np.float32))
