"""A corpus of models as a hub receives them, written by the real writers: tiny GGUF (gguf's
GGUFWriter, some quantized), safetensors files, HF directories (transformers' save_pretrained,
one sharded), a split GGUF set, a watermarked copy, and hostile uploads (truncated, lying
headers, empty, pickles, a control character in a file name). Used by tests/scan and
benchmarks/bench_scan.py; the real files of ../shared/data are scanned in place beside it.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from tests.support.gguf_bytes import valid_model

N_EMBD, N_FF, N_LAYER, N_VOCAB = 64, 128, 2, 256
Q = gguf.GGMLQuantizationType


@dataclass
class Corpus:
    root: Path
    models: dict[str, Path] = field(default_factory=dict)
    """Name -> path of every model written (a folder for folder models, the first part of a split set)."""
    hostile: set[str] = field(default_factory=set)
    """Names of the models a reader must refuse (error rows)."""
    pickles: set[str] = field(default_factory=set)


def _tokens(writer: gguf.GGUFWriter) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(N_VOCAB - 3)])
    writer.add_token_scores([0.0] * 3 + [float(-i) for i in range(N_VOCAB - 3)])


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"token_embd.weight": rng.standard_normal((N_VOCAB, N_EMBD)), "output_norm.weight": np.ones(N_EMBD)}
    for i in range(N_LAYER):
        out[f"blk.{i}.attn_norm.weight"] = np.ones(N_EMBD)
        for role in ("attn_q", "attn_k", "attn_v", "attn_output"):
            out[f"blk.{i}.{role}.weight"] = rng.standard_normal((N_EMBD, N_EMBD))
        out[f"blk.{i}.ffn_norm.weight"] = np.ones(N_EMBD)
        out[f"blk.{i}.ffn_gate.weight"] = rng.standard_normal((N_FF, N_EMBD))
        out[f"blk.{i}.ffn_up.weight"] = rng.standard_normal((N_FF, N_EMBD))
        out[f"blk.{i}.ffn_down.weight"] = rng.standard_normal((N_EMBD, N_FF))
    return {name: (0.02 * v if v.ndim == 2 else v).astype(np.float32) for name, v in out.items()}


def write_tiny_gguf(path: Path, seed: int, qtype: int = Q.F32, license_name: str | None = None,
                    base_model: str | None = None, split_max_tensors: int = 0) -> Path:
    """A llama-shaped GGUF with a small vocabulary; matrices stored as ``qtype`` (F32, F16 or Q8_0)."""
    writer = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    writer.add_name(f"tiny-{seed}")
    if license_name:
        writer.add_license(license_name)
    if base_model:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base_model)
    writer.add_context_length(256), writer.add_embedding_length(N_EMBD), writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF), writer.add_head_count(4), writer.add_head_count_kv(4)
    writer.add_vocab_size(N_VOCAB)
    _tokens(writer)
    for name, values in _tensors(seed).items():
        if values.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(name, values)
        elif qtype == Q.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            packed = gguf.quants.quantize(values, qtype)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_safetensors(path: Path, seed: int) -> Path:
    """HF-named llama tensors in one safetensors file (safetensors' own writer), with metadata."""
    from safetensors.numpy import save_file

    hf = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    roles = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    tensors = {}
    for name, values in _tensors(seed).items():
        if name in hf:
            tensors[hf[name]] = values
        else:
            _, layer, role, _ = name.split(".")
            tensors[f"model.layers.{layer}.{roles[role]}.weight"] = values
    save_file(tensors, str(path), metadata={"format": "pt", "base_model": "tiny-base"})
    return path


def _hostile(root: Path, corpus: Corpus, shared_quant: Path) -> None:
    (root / "hostile").mkdir()
    truncated = root / "hostile" / "truncated.gguf"
    source = (shared_quant / "tiny-llama-Q4_K_M.gguf").read_bytes()
    truncated.write_bytes(source[: len(source) // 2])
    (root / "hostile" / "empty.safetensors").write_bytes(b"")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (root / "hostile" / "lying-header.safetensors").write_bytes(struct.pack("<Q", 10**12) + header + bytes(8))
    lying_count = valid_model()
    lying_count.n_tensors = 10**9
    (root / "hostile" / "tensor-count.gguf").write_bytes(lying_count.build())
    # A pickle's first bytes (PROTO 4, FRAME); never loaded, by any reader.
    (root / "hostile" / "legacy.pt").write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.")
    pickled_dir = root / "hostile" / "pickled-hf"
    pickled_dir.mkdir()
    (pickled_dir / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (pickled_dir / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    for name in ("truncated.gguf", "empty.safetensors", "lying-header.safetensors", "tensor-count.gguf"):
        corpus.models[name] = root / "hostile" / name
        corpus.hostile.add(name)
    corpus.models["legacy.pt"] = root / "hostile" / "legacy.pt"
    corpus.models["pickled-hf"] = pickled_dir
    corpus.pickles |= {"legacy.pt", "pickled-hf"}


def build_corpus(root: Path, shared_quant: Path, n_gguf: int = 8, n_safetensors: int = 4, hf: bool = True) -> Corpus:
    """Write the corpus under ``root`` (see the module docstring)."""
    corpus = Corpus(root)
    (root / "gguf").mkdir(parents=True)
    types = (Q.F32, Q.F16, Q.Q8_0)
    for seed in range(n_gguf):
        path = root / "gguf" / f"tiny-{seed}.gguf"
        corpus.models[path.name] = write_tiny_gguf(path, seed, types[seed % 3], "apache-2.0" if seed % 2 == 0 else None,
                                                   base_model="tiny-base" if seed % 4 == 0 else None)
    (root / "loose").mkdir()
    (root / "loose" / "README.md").write_text("# uploads\nnot a model\n")
    (root / "loose" / "LICENSE").write_text("Apache License, Version 2.0\n")
    for seed in range(n_safetensors):
        path = root / "loose" / f"tiny-{seed}.safetensors"
        corpus.models[path.name] = write_tiny_safetensors(path, 100 + seed)
    split_dir = root / "split"
    split_dir.mkdir()
    write_tiny_gguf(split_dir / "tiny-split.gguf", 50, split_max_tensors=8)
    corpus.models["tiny-split"] = sorted(split_dir.glob("tiny-split-*.gguf"))[0]
    escaped = root / "gguf" / "evil\x1b[31mname.gguf"
    corpus.models[escaped.name] = write_tiny_gguf(escaped, 60, Q.F16, "mit")
    if hf:
        from tests.conftest import save_tiny_model

        corpus.models["hf-llama"] = save_tiny_model(root / "hf" / "hf-llama", "llama", seed=3)
        corpus.models["hf-sharded"] = save_tiny_model(root / "hf" / "hf-sharded", "llama", seed=4, max_shard_size="100KB")
    _hostile(root, corpus, shared_quant)
    return corpus
