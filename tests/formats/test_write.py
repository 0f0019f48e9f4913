"""The one model writer: byte-faithful copies, replacement, retyping to every type the
codecs quantize, HF <-> GGUF layouts, atomicity and flat memory, on real files."""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from provenance.codecs import quantize_rows
from provenance.codecs.quantize_ref import supported_types
from provenance.formats import open_checkpoint
from provenance.formats.dtypes import STORAGE_TYPES, torch_dtype
from provenance.formats.gguf_header import GGUFKeyValue, ValueType
from provenance.formats.write import CHUNK_WEIGHTS, WriteError, write_checkpoint, write_gguf
from provenance.names.qk_permute import gguf_to_hf_rows
from tests.conftest import QUANT_DIR, SHARED_DATA, VOCAB_DIR, Bounded
from tests.formats.test_split_and_names import write_split

REAL_GGUF = sorted(QUANT_DIR.glob("*.gguf")) + sorted(VOCAB_DIR.glob("*.gguf")) + [SHARED_DATA / "ollama" / "llama-2-tiny-random.gguf"]
F32 = QUANT_DIR / "tiny-llama-f32.gguf"


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("path", REAL_GGUF, ids=lambda p: p.name)
def test_unchanged_gguf_copy_is_byte_identical(path: Path, tmp_path: Path) -> None:
    """llama.cpp's own files (every quant type, vocab-only files, ollama's) come out
    byte for byte: metadata order and types, string arrays, alignment, padding."""
    with open_checkpoint(path) as ckpt:
        report = write_checkpoint(ckpt, tmp_path / path.name)
    assert (tmp_path / path.name).read_bytes() == path.read_bytes()
    assert report.copied == list(report.types) and not report.replaced and not report.retyped
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fixture", ["hf_llama", "hf_llama_sharded"])
def test_unchanged_hf_directory_copy_is_byte_identical(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source: Path = request.getfixturevalue(fixture)
    with open_checkpoint(source) as ckpt:
        report = write_checkpoint(ckpt, tmp_path / "copy")
    assert report.format == "safetensors-directory"
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(p.name for p in source.iterdir())
    for entry in source.iterdir():
        assert (tmp_path / "copy" / entry.name).read_bytes() == entry.read_bytes(), entry.name


def test_safetensors_layout_is_the_librarys(tmp_path: Path) -> None:
    """Every dtype the library writes, names that sort differently as bytes and as text, one
    metadata key: our header and tensor order equal save_file's, so the copy is identical."""
    tensors = {}
    for i, name in enumerate(n for n, spec in STORAGE_TYPES.items() if spec.torch and torch_dtype(n) is not None):
        dtype = torch_dtype(name)
        assert dtype is not None
        values = torch.arange(6 + i, dtype=torch.float32).reshape(1, -1)
        tensors[f"t{i}.{name}"] = values.to(dtype) if dtype != torch.bool else values > 2
    tensors["Z\u00e9\u00e8"] = torch.ones(3)
    tensors["z\nq\u2028"] = torch.zeros(2, dtype=torch.float16)
    save_file(tensors, tmp_path / "all.safetensors", metadata={"format": "pt"})
    with open_checkpoint(tmp_path / "all.safetensors") as ckpt:
        write_checkpoint(ckpt, tmp_path / "copy.safetensors", replace={"Z\u00e9\u00e8": np.ones(3, np.float32)})
    assert (tmp_path / "copy.safetensors").read_bytes() == (tmp_path / "all.safetensors").read_bytes()


def test_replace_gguf_f32_and_f16(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for source in (F32, QUANT_DIR / "tiny-llama-f16.gguf"):
        with open_checkpoint(source) as ckpt:
            shape = ckpt.info("blk.1.ffn_down.weight").shape
            new = rng.standard_normal(shape).astype(np.float32)
            report = write_checkpoint(ckpt, tmp_path / source.name, replace={"blk.1.ffn_down.weight": new})
            with open_checkpoint(tmp_path / source.name) as out:
                stored = new if ckpt.info("blk.1.ffn_down.weight").dtype == "F32" else new.astype(np.float16).astype(np.float32)
                assert np.array_equal(out.read("blk.1.ffn_down.weight"), stored)
                assert out.key_values == ckpt.key_values
                for name in ckpt.tensors:
                    if name != "blk.1.ffn_down.weight":
                        assert out.tensor_sha256(name) == ckpt.tensor_sha256(name)
        assert report.replaced == ["blk.1.ffn_down.weight"]


@pytest.mark.parametrize("qtype", supported_types())
def test_retype_to_every_type_the_codecs_quantize(qtype: str, tmp_path: Path) -> None:
    """Retyped tensors hold exactly the codecs' llama.cpp-exact bytes and decode close to the
    source; untouched tensors are byte-identical."""
    names = ["blk.0.ffn_down.weight", "blk.1.attn_v.weight"]
    out = tmp_path / f"{qtype}.gguf"
    with open_checkpoint(F32) as ckpt:
        report = write_checkpoint(ckpt, out, retype=dict.fromkeys(names, qtype))
        with open_checkpoint(out) as written:
            for name in ckpt.tensors:
                if name in names:
                    source = ckpt.read_rows(name)
                    assert written.info(name).dtype == qtype
                    assert np.array_equal(written.raw_rows(name), quantize_rows(source, qtype))
                    back = written.read_rows(name)
                    # within the coarsest type's error (1-bit Q1_0: ~0.6 of the RMS; an unrelated tensor: ~1.4)
                    assert np.sqrt(np.mean((back - source) ** 2)) < 0.8 * np.sqrt(np.mean(source**2))
                else:
                    assert written.tensor_sha256(name) == ckpt.tensor_sha256(name)
    assert report.retyped == names if qtype != "F32" else report.copied == list(ckpt.tensors)


def test_hf_replacement_goes_back_to_hf_row_order(hf_llama: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with open_checkpoint(hf_llama) as ckpt:
        info = ckpt.info("blk.0.attn_q.weight")
        new = rng.standard_normal(info.shape).astype(np.float32)
        with pytest.raises(WriteError, match="GGUF output"):
            write_checkpoint(ckpt, tmp_path / "out", tensors=["blk.0.attn_q.weight"])
        write_checkpoint(ckpt, tmp_path / "out", replace={"blk.0.attn_q.weight": new})
    stored = load_file(tmp_path / "out" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert np.array_equal(stored, gguf_to_hf_rows(new, info.qk_heads))
    with open_checkpoint(tmp_path / "out") as out:
        assert np.array_equal(out.read("blk.0.attn_q.weight"), new)
    assert (tmp_path / "out" / "config.json").read_bytes() == (hf_llama / "config.json").read_bytes()


def test_sharded_retype_updates_the_index(hf_llama_sharded: Path, tmp_path: Path) -> None:
    with open_checkpoint(hf_llama_sharded) as ckpt:
        names = [n for n, i in ckpt.tensors.items() if len(i.shape) == 2]
        write_checkpoint(ckpt, tmp_path / "half", retype=dict.fromkeys(names, "F16"))
        with open_checkpoint(tmp_path / "half") as out:
            assert out.format == "hf-directory" and len(out.files) == len(ckpt.files)
            for name in ckpt.tensors:
                expected = ckpt.read(name)
                assert np.array_equal(out.read(name), expected.astype(np.float16).astype(np.float32) if name in names else expected)
            index = json.loads((tmp_path / "half" / "model.safetensors.index.json").read_text())
            assert index["metadata"]["total_size"] == sum(i.n_bytes for i in out.tensors.values())


def test_hf_to_gguf_equals_llama_cpps_converter(hf_llama_spm: Path, converter: Callable[..., Path], tmp_path: Path) -> None:
    """Stored bytes copied across formats, q/k rows reordered as llama.cpp's converter does."""
    reference = converter(hf_llama_spm, tmp_path / "converted.gguf", "f32")
    with open_checkpoint(hf_llama_spm) as ckpt:
        report = write_checkpoint(ckpt, tmp_path / "ours.gguf", to="gguf")
    assert report.copied == list(report.types)
    with open_checkpoint(reference) as ref, open_checkpoint(tmp_path / "ours.gguf") as ours:
        assert set(ours.tensors) == set(ref.tensors)
        for name, info in ref.tensors.items():
            assert ours.info(name).shape == info.shape
            assert np.array_equal(ours.raw_rows(name), ref.raw_rows(name)), name
        for field in ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "context_length", "norm_eps"):
            assert getattr(ours.architecture, field) == getattr(ref.architecture, field), field


def test_split_gguf_is_written_whole(tmp_path: Path) -> None:
    parts = write_split(tmp_path)
    with open_checkpoint(parts[0]) as ckpt:
        write_checkpoint(ckpt, tmp_path / "whole.gguf")
        with open_checkpoint(tmp_path / "whole.gguf") as whole:
            assert whole.format == "gguf" and list(whole.tensors) == list(ckpt.tensors)
            assert not any(kv.key.startswith("split.") for kv in whole.key_values)
            assert all(np.array_equal(whole.read(n), ckpt.read(n)) for n in ckpt.tensors)


def test_write_gguf_from_arrays_with_types_keys_and_alignment(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    tensors = {"blk.0.ffn_up.weight": rng.standard_normal((8, 256)).astype(np.float32), "output_norm.weight": np.ones(40, np.float32)}
    keys = [GGUFKeyValue("general.name", "fresh", ValueType.STRING), GGUFKeyValue("general.alignment", 256, ValueType.UINT32)]
    write_gguf(tmp_path / "f.gguf", "llama", tensors, keys, types={"blk.0.ffn_up.weight": "Q4_K", "output_norm.weight": "F16"})
    with open_checkpoint(tmp_path / "f.gguf") as ckpt:
        assert ckpt.alignment == 256 and all(i.offset % 256 == 0 for i in ckpt.tensors.values())
        assert [(k.key, k.value) for k in ckpt.key_values] == [("general.architecture", "llama"), ("general.name", "fresh"),
                                                               ("general.alignment", 256)]
        assert ckpt.info("blk.0.ffn_up.weight").dtype == "Q4_K"
        assert np.array_equal(ckpt.raw_rows("blk.0.ffn_up.weight"), quantize_rows(tensors["blk.0.ffn_up.weight"], "Q4_K"))
        write_checkpoint(ckpt, tmp_path / "copy.gguf")
    assert (tmp_path / "copy.gguf").read_bytes() == (tmp_path / "f.gguf").read_bytes()
    with pytest.raises(WriteError, match="power of two"):
        write_gguf(tmp_path / "bad.gguf", "llama", tensors, [GGUFKeyValue("general.alignment", 48, ValueType.UINT32)])
    assert not (tmp_path / "bad.gguf").exists()


# ----- refusals, interruptions, memory ------------------------------------------------------
def test_bad_requests_write_nothing(tmp_path: Path) -> None:
    with open_checkpoint(QUANT_DIR / "stories260K-f32.gguf") as ckpt:
        cases: list[dict] = [
            {"replace": {"blk.0.attn_q.weight": np.zeros((3, 3), np.float32)}},
            {"replace": {"blk.9.nothing.weight": np.zeros(3)}},
            {"retype": {"blk.0.attn_q.weight": "Q4_K"}},  # rows of 64 do not hold a 256-weight block
            {"retype": {"blk.0.attn_q.weight": "F8_E4M3"}},  # not a ggml type
            {"to": "safetensors"},
            {"tensors": ["blk.0.attn_q.weight", "blk.0.attn_q.weight"]},  # twice
            {"replace": {"blk.0.attn_q.weight": lambda a, b: np.zeros((b - a, 3), np.float32)}},
        ]
        for case in cases:
            with pytest.raises(WriteError):
                write_checkpoint(ckpt, tmp_path / "out.gguf", **case)
            assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, MemoryError])
def test_an_interrupted_write_leaves_nothing_and_keeps_the_old_output(interrupt: type[BaseException], hf_llama: Path,
                                                                     tmp_path: Path) -> None:
    calls = []

    def failing(start: int, stop: int) -> np.ndarray:
        calls.append(start)
        raise interrupt()

    (tmp_path / "out.gguf").write_bytes(b"previous result")
    with open_checkpoint(F32) as ckpt, pytest.raises(interrupt):
        write_checkpoint(ckpt, tmp_path / "out.gguf", replace={"blk.1.ffn_up.weight": failing})
    assert calls and (tmp_path / "out.gguf").read_bytes() == b"previous result" and _leftovers(tmp_path) == []
    with open_checkpoint(hf_llama) as ckpt, pytest.raises(interrupt):
        write_checkpoint(ckpt, tmp_path / "dir", replace={"blk.1.ffn_up.weight": failing})
    assert not (tmp_path / "dir").exists() and _leftovers(tmp_path) == []


def test_a_source_truncated_mid_write_leaves_nothing(tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "src" / "m.gguf"
    source.parent.mkdir()
    shutil.copy(F32, source)
    out = tmp_path / "out"
    out.mkdir()
    with open_checkpoint(source) as ckpt:
        os.truncate(source, ckpt.info("blk.1.ffn_up.weight").offset)
        with pytest.raises(Exception, match="short read"):
            write_checkpoint(ckpt, out / "m.gguf")
    assert list(out.iterdir()) == []


def test_memory_stays_flat_in_model_size(tmp_path: Path) -> None:
    """Quantizing a model twice as large peaks at the same traced memory: one chunk of rows,
    never a whole model (numpy buffers are traced; the largest tensor is 2 chunks)."""
    rng = np.random.default_rng(3)
    block = rng.standard_normal((2 * CHUNK_WEIGHTS // 1024, 1024)).astype(np.float32)
    peaks = {}
    for n in (4, 8):
        src = tmp_path / f"src{n}.gguf"
        write_gguf(src, "llama", {f"blk.{i}.ffn_up.weight": block for i in range(n)})
        with open_checkpoint(src) as ckpt, Bounded() as bounded:
            write_checkpoint(ckpt, tmp_path / f"q{n}.gguf", retype=dict.fromkeys(ckpt.tensors, "Q8_0"))
        peaks[n] = bounded.peak_bytes
    model_bytes = 8 * block.nbytes
    assert peaks[8] < 1.25 * peaks[4] and peaks[8] < model_bytes / 4, (peaks, model_bytes)


def test_safetensors_header_is_padded_and_valid(tmp_path: Path) -> None:
    save_file({"a": torch.ones(3)}, tmp_path / "s.safetensors", metadata={"k": "v"})
    with open_checkpoint(tmp_path / "s.safetensors") as ckpt:
        write_checkpoint(ckpt, tmp_path / "o.safetensors", retype={"a": "BF16"})
    data = (tmp_path / "o.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0 and json.loads(data[8 : 8 + n])["a"]["dtype"] == "BF16"
    assert torch.equal(load_file(tmp_path / "o.safetensors")["a"], torch.ones(3, dtype=torch.bfloat16))
