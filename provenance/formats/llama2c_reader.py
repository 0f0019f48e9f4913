"""llama2.c's legacy checkpoint format (``run.c`` version 0), e.g. karpathy's tinyllamas.

There is no magic number: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size, seq_len; a negative vocab_size means an unshared classifier)
followed by float32 slabs. A file is accepted only if the header is plausible and the
file size equals exactly what the header implies, which is a strong structural check.
llama2.c uses interleaved RoPE pairs, i.e. already llama.cpp's q/k row layout.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from provenance.errors import MalformedCheckpoint
from provenance.formats.base import Checkpoint, FileSpan, TensorInfo
from provenance.formats.files import open_input, read_exactly
from provenance.names.arch import ArchRecord
from provenance.names.canonical import layer_and_role

HEADER = struct.Struct("<7i")
MAX_DIM = 1 << 16


def llama2c_layout(header: tuple[int, ...]) -> list[tuple[str, tuple[int, ...], bool]] | None:
    """``[(name, shape, per_layer)]`` in file order, or None if the header is implausible."""
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = header
    shared = vocab > 0
    vocab = abs(vocab)
    if not (0 < dim <= MAX_DIM and 0 < hidden <= 4 * MAX_DIM and 0 < n_layers <= 1024 and 0 < n_heads <= dim
            and 0 < n_kv_heads <= n_heads and n_heads % n_kv_heads == 0 and dim % n_heads == 0
            and 0 < vocab <= 1 << 20 and 0 < seq_len <= 1 << 20 and (dim // n_heads) % 2 == 0):
        return None
    kv_dim = dim * n_kv_heads // n_heads
    head_half = dim // n_heads // 2
    layout = [
        ("token_embd", (vocab, dim), False),
        ("attn_norm", (dim,), True),
        ("attn_q", (dim, dim), True),
        ("attn_k", (kv_dim, dim), True),
        ("attn_v", (kv_dim, dim), True),
        ("attn_output", (dim, dim), True),
        ("ffn_norm", (dim,), True),
        ("ffn_gate", (hidden, dim), True),
        ("ffn_down", (dim, hidden), True),
        ("ffn_up", (hidden, dim), True),
        ("output_norm", (dim,), False),
        ("rope_freqs_real", (seq_len, head_half), False),
        ("rope_freqs_imag", (seq_len, head_half), False),
    ]
    if not shared:
        layout.append(("output", (vocab, dim), False))
    return layout


def expected_size(header: tuple[int, ...]) -> int | None:
    layout = llama2c_layout(header)
    if layout is None:
        return None
    n_layers = header[2]
    floats = sum(int(np.prod(shape)) * (n_layers if per_layer else 1) for _, shape, per_layer in layout)
    return HEADER.size + 4 * floats


def looks_like_llama2c(prefix: bytes, size: int) -> bool:
    return len(prefix) >= HEADER.size and expected_size(HEADER.unpack_from(prefix)) == size


class Llama2cCheckpoint(Checkpoint):
    format = "llama2c"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        path = str(path)
        with open_input(path, "header") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = read_exactly(handle, HEADER.size)
        if len(prefix) < HEADER.size:
            raise MalformedCheckpoint(path, "truncated llama2.c header", field="header", offset=0)
        self.header = HEADER.unpack(prefix)
        if expected_size(self.header) != size:
            raise MalformedCheckpoint(path, f"header {self.header} does not match the file size {size}", field="header", offset=0)
        self.files.append(FileSpan(path, size, HEADER.size, size))
        dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = self.header
        self.metadata = dict(
            zip(
                ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"),
                self.header,
                strict=True,
            )
        )
        self._arch = ArchRecord(
            arch="llama",
            n_layer=n_layers,
            n_embd=dim,
            n_ff=hidden,
            n_head=n_heads,
            n_head_kv=n_kv_heads,
            head_dim=dim // n_heads,
            vocab_size=abs(vocab),
            context_length=seq_len,
            tie_word_embeddings=vocab > 0,
        )
        offset = HEADER.size
        layout = llama2c_layout(self.header)
        assert layout is not None
        for role, shape, per_layer in layout:
            n_bytes = 4 * int(np.prod(shape))
            for layer in range(n_layers if per_layer else 1):
                name = f"blk.{layer}.{role}.weight" if per_layer else f"{role}.weight"
                _, parsed_role = layer_and_role(name)
                self.tensors[name] = TensorInfo(
                    name=name,
                    stored_name=name,
                    shape=shape,
                    dtype="F32",
                    file=path,
                    offset=offset,
                    n_bytes=n_bytes,
                    layer=layer if per_layer else None,
                    role=parsed_role,
                )
                offset += n_bytes

    @property
    def architecture(self) -> ArchRecord:
        return self._arch

    @property
    def metadata_claims(self) -> dict[str, Any]:
        return {}
