"""The typed GGUF header facts the writer and the analyses take from the reader
(key/values with their stored types, alignment, architecture name), against gguf-py."""
from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from provenance.formats import open_checkpoint
from provenance.formats.gguf_header import ValueType
from tests.conftest import QUANT_DIR, SHARED_DATA, VOCAB_DIR

FILES = sorted(VOCAB_DIR.glob("*.gguf")) + [QUANT_DIR / "tiny-llama-Q4_K_M.gguf", SHARED_DATA / "ollama" / "llama-2-tiny-random.gguf"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_key_values_equal_gguf_py(path: Path) -> None:
    """On llama.cpp's own files (trusted here, so gguf-py may read them): every key in file
    order, each with its stored type, scalar values equal, arrays lazily equal."""
    reader = GGUFReader(path)
    with open_checkpoint(path) as ckpt:
        fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        assert [kv.key for kv in ckpt.key_values] == list(fields)
        for kv in ckpt.key_values:
            field = fields[kv.key]
            assert int(kv.type) == int(field.types[0]), kv.key
            if kv.type == ValueType.ARRAY:
                assert int(kv.value.element_type) == int(field.types[1]) and len(kv.value) == len(field.data), kv.key
                if kv.value.element_type == ValueType.STRING:
                    assert kv.value.head(3) == field.contents()[:3], kv.key
            else:
                assert kv.value == pytest.approx(field.contents()), kv.key
        assert ckpt.alignment == 32
        assert ckpt.architecture_name == reader.fields["general.architecture"].contents()


def test_typed_key_values_keep_arrays_lazy() -> None:
    with open_checkpoint(VOCAB_DIR / "ggml-vocab-gpt-2.gguf") as ckpt:
        kv = {k.key: k for k in ckpt.key_values}
        tokens = kv["tokenizer.ggml.tokens"]
        assert tokens.type == ValueType.ARRAY and tokens.value.element_type == ValueType.STRING
        assert kv["general.architecture"].type == ValueType.STRING
