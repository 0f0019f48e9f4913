"""Fuzz targets: one per reader, each running the full read path on bytes put where that
reader finds them (docs/security.md, "Fuzzing").

A target turns the fuzzer's bytes into one or more files of a fresh model folder, beside
fixed companion files written once by the real writers (a llama-named safetensors for the
``config.json`` target, two shards for the index, a tokenizer.json for its config), then
opens the input and reads what every command reads: the ``inspect`` document
(:func:`provenance.inspect.describe_checkpoint`: architecture, claims, tokenizer summary,
tensor table) and :func:`provenance.formats.verify.verify_readable` (vocabulary, first and
last rows of the first few tensors, their stored bytes, a sampled element).

The only exception a target may see is :class:`provenance.errors.ProvenanceError`: anything
else escapes to the fuzzer, which records the input as a crash. The same function replays
corpus files and crash reproducers in the tests (``tests/fuzz/test_fuzz_regressions.py``).
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from provenance.errors import ProvenanceError
from provenance.formats import open_checkpoint
from provenance.formats.verify import verify_readable
from provenance.inspect import describe_checkpoint

CORPUS = Path(__file__).resolve().parent / "corpus"
SPLIT_NAMES = ("model-00001-of-00002.gguf", "model-00002-of-00002.gguf")
"""A split-GGUF input is both parts: ``u32 length of part 1 | part 1 | part 2`` (:func:`pack_parts`)."""


def pack_parts(first: bytes, second: bytes) -> bytes:
    return struct.pack("<I", len(first)) + first + second


def unpack_parts(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < 4:
        return data, b""
    (n,) = struct.unpack_from("<I", data)
    n = min(n, len(data) - 4)
    return data[4:4 + n], data[4 + n:]


TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
              "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 32, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def tiny_llama_tensors() -> dict[str, np.ndarray]:
    """The tensors of :data:`TINY_LLAMA`, HF names, as ``save_pretrained`` names them."""
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (32, 16), "model.norm.weight": (16,), "lm_head.weight": (32, 16)}
    for layer in range(2):
        prefix = f"model.layers.{layer}."
        shapes |= {prefix + "self_attn.q_proj.weight": (16, 16), prefix + "self_attn.k_proj.weight": (8, 16),
                   prefix + "self_attn.v_proj.weight": (8, 16), prefix + "self_attn.o_proj.weight": (16, 16),
                   prefix + "mlp.gate_proj.weight": (24, 16), prefix + "mlp.up_proj.weight": (24, 16),
                   prefix + "mlp.down_proj.weight": (16, 24), prefix + "input_layernorm.weight": (16,),
                   prefix + "post_attention_layernorm.weight": (16,)}
    return {name: rng.standard_normal(shape).astype(np.float16) for name, shape in shapes.items()}


def _write_llama_folder(directory: Path, shards: int) -> None:
    """Companion files by the real writers: safetensors' own ``save_file`` (one file, or two
    shards and the index ``save_pretrained`` writes), ``config.json`` as transformers writes it."""
    import json

    from safetensors.numpy import save_file

    tensors = tiny_llama_tensors()
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"))
        return
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file_name, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(directory / file_name))
    (directory / "config.json").write_text(json.dumps(TINY_LLAMA, indent=2))


def _write_tokenizer_folder(directory: Path) -> None:
    (directory / "tokenizer.json").write_bytes((CORPUS / "tokenizer-json" / "bpe.json").read_bytes())


@dataclass(frozen=True)
class Target:
    """Where the fuzzer's bytes go and what is opened."""

    name: str
    files: Callable[[bytes], dict[str, bytes]]
    """The input's files (name -> bytes) for the fuzzer's data."""
    opens: str | None
    """The file opened (one of ``files``), or None to open the folder."""
    companions: Callable[[Path], None] | None = None
    """Writes the fixed files of the folder, once."""
    seeds: tuple[str, ...] = ()
    """Real files under ../shared/data used as extra seeds by the long campaign."""


def _one(name: str) -> Callable[[bytes], dict[str, bytes]]:
    return lambda data: {name: data}


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("gguf", _one("model.gguf"), "model.gguf",
           seeds=("llamacpp-quant/stories260K-Q8_0.gguf", "gguf-vocab/ggml-vocab-llama-spm.gguf",
                  "corrupted/utf8-mangled-ggml-vocab-bert-bge.gguf")),
    Target("gguf-split", lambda data: dict(zip(SPLIT_NAMES, unpack_parts(data), strict=True)), SPLIT_NAMES[0]),
    Target("safetensors", _one("model.safetensors"), "model.safetensors"),
    Target("config", _one("config.json"), None, lambda d: _write_llama_folder(d, 1)),
    Target("index", _one("model.safetensors.index.json"), None, lambda d: _write_llama_folder(d, 2)),
    Target("tokenizer-json", _one("tokenizer.json"), "tokenizer.json"),
    Target("tokenizer-config", _one("tokenizer_config.json"), None, _write_tokenizer_folder),
    Target("tokenizer-model", _one("tokenizer.model"), "tokenizer.model", seeds=("stories260K/tokenizer.model",)),
    Target("llama2c", _one("model.bin"), "model.bin", seeds=("stories260K/stories260K.bin",)),
    Target("pickle", _one("pytorch_model.bin"), "pytorch_model.bin"),
)}


ROWS_OF_TENSORS = 4
"""The read path decodes rows of the first few tensors: each tensor's decoding depends on its
table entry only, and the seeds put every storage type among some file's first tensors."""


def read_everything(path: str | os.PathLike[str], max_tensors: int | None = ROWS_OF_TENSORS) -> None:
    """The full read path of one input; only :class:`ProvenanceError` is expected."""
    with open_checkpoint(path) as checkpoint:
        describe_checkpoint(checkpoint, path)
        verify_readable(checkpoint, max_tensors)


def _overwrite(path: str, content: bytes) -> None:
    """Replace a file's bytes in place: one ``open(O_TRUNC)`` and a write, no unlink and create
    (which cost the harness several times what the reader spends on a typical mutated input)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class Runner:
    """Runs one target's inputs in a scratch folder (on tmpfs where there is one).

    Per input the harness only rewrites the input's files in place; what an input left that
    the next one does not write (a target whose file names vary) is removed, so every run sees
    exactly its input and the fixed companions."""

    def __init__(self, target: Target, root: str | None = None) -> None:
        self.target = target
        base = root or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
        self.directory = Path(tempfile.mkdtemp(prefix=f"provenance-fuzz-{target.name}-", dir=base))
        if target.companions is not None:
            target.companions(self.directory)
        self.fixed = set(os.listdir(self.directory))
        self.opened = str(self.directory / target.opens) if target.opens else str(self.directory)
        self._written: set[str] = set()

    def run(self, data: bytes) -> str:
        """``ok`` or ``refused`` (a ProvenanceError); anything else propagates."""
        files = self.target.files(data)
        for name in self._written - files.keys():
            os.unlink(os.path.join(self.directory, name))
        for name, content in files.items():
            if name in self.fixed:
                raise ValueError(f"target {self.target.name} would overwrite its companion {name}")
            _overwrite(os.path.join(self.directory, name), content)
        self._written = set(files)
        try:
            read_everything(self.opened)
        except ProvenanceError:
            return "refused"
        return "ok"

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
