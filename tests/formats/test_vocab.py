"""The vocabulary accessor and the typed GGUF header facts, against gguf-py and transformers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from provenance.errors import LimitExceeded
from provenance.formats import open_checkpoint
from provenance.formats.gguf_header import ValueType
from tests.conftest import QUANT_DIR, VOCAB_DIR, save_tiny_model

VOCABS = sorted(VOCAB_DIR.glob("*.gguf"))


@pytest.mark.parametrize("path", VOCABS + [QUANT_DIR / "tiny-llama-Q4_K_M.gguf"], ids=lambda p: p.name)
def test_gguf_vocabulary_and_key_values_equal_gguf_py(path: Path) -> None:
    """On llama.cpp's own files (trusted here, so gguf-py may read them): tokens, scores,
    merges and token types; every key in file order with its stored type; alignment."""
    reader = GGUFReader(path)
    with open_checkpoint(path) as ckpt:
        assert [kv.key for kv in ckpt.key_values] == [k for k in reader.fields if not k.startswith("GGUF.")]
        for kv in ckpt.key_values:
            field = reader.fields[kv.key]
            assert int(kv.type) == int(field.types[0]), kv.key
        assert ckpt.alignment == 32 and ckpt.architecture_name == reader.fields["general.architecture"].contents()
        vocab = ckpt.vocabulary()
        assert vocab is not None and vocab.source == "gguf metadata"
        tokens = reader.fields["tokenizer.ggml.tokens"]
        expected = [bytes(tokens.parts[i]) for i in tokens.data]
        assert len(vocab) == len(expected) and vocab.tokens() == expected
        for key, got in (("scores", vocab.scores()), ("token_type", vocab.token_types())):
            if f"tokenizer.ggml.{key}" in reader.fields:
                assert got is not None and np.array_equal(got, np.array(reader.fields[f"tokenizer.ggml.{key}"].contents()))
        merges = vocab.merges()
        if "tokenizer.ggml.merges" in reader.fields:
            field = reader.fields["tokenizer.ggml.merges"]
            assert merges == [bytes(field.parts[i]) for i in field.data]
        else:
            assert merges is None
        assert vocab.model == reader.fields["tokenizer.ggml.model"].contents()
        ids = {k.removeprefix("tokenizer.ggml.").removesuffix("_token_id"): f.contents()
               for k, f in reader.fields.items() if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")}
        assert vocab.special_tokens == ids and ids


def test_phi3_extends_llama2_through_the_accessor() -> None:
    with open_checkpoint(VOCAB_DIR / "ggml-vocab-llama-spm.gguf") as llama, open_checkpoint(VOCAB_DIR / "ggml-vocab-phi-3.gguf") as phi:
        a, b = llama.vocabulary(), phi.vocabulary()
        assert a is not None and b is not None
        assert b.tokens()[:32000] == a.tokens() and len(b) == 32064


def test_a_model_without_a_tokenizer_has_no_vocabulary(hf_llama: Path) -> None:
    with open_checkpoint(QUANT_DIR / "stories260K-f32.gguf") as gguf_model, open_checkpoint(hf_llama) as hf:
        assert gguf_model.vocabulary() is None and hf.vocabulary() is None


def test_hf_tokenizer_json_equals_the_gguf_tokens(hf_llama_spm: Path, tmp_path: Path) -> None:
    """transformers' tokenizer.json of the Llama 2 tokenizer gives the same token bytes, in
    id order, as llama.cpp's GGUF vocabulary of it; special ids come from config.json."""
    from transformers import LlamaTokenizer

    model_dir = tmp_path / "with-tokenizer"
    shutil.copytree(hf_llama_spm, model_dir)
    tokenizer = LlamaTokenizer.from_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    with open_checkpoint(model_dir) as hf, open_checkpoint(VOCAB_DIR / "ggml-vocab-llama-spm.gguf") as gg:
        vocab, reference = hf.vocabulary(), gg.vocabulary()
        assert vocab is not None and reference is not None and vocab.source == "tokenizer.json"
        assert vocab.tokens() == reference.tokens() and len(vocab) == 32000
        assert vocab.model == "bpe" and vocab.merges() and all(b" " in m for m in vocab.merges()[:100])
        config = json.loads((model_dir / "config.json").read_text())
        assert vocab.special_tokens["bos"] == config["bos_token_id"] == reference.special_tokens["bos"]


def test_unigram_scores_and_hostile_ids(tmp_path: Path) -> None:
    model_dir = save_tiny_model(tmp_path / "m", seed=1)
    document = {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["a", -1.5], ["\u00e9", -2.25]]},
                "added_tokens": [{"id": 3, "content": "<extra>"}, {"id": 1, "content": "ignored: id taken"}]}
    (model_dir / "tokenizer.json").write_text(json.dumps(document))
    with open_checkpoint(model_dir) as ckpt:
        vocab = ckpt.vocabulary()
        assert vocab is not None
        assert vocab.tokens() == [b"<unk>", b"a", "\u00e9".encode(), b"<extra>"] and vocab.model == "unigram"
        assert np.array_equal(vocab.scores(), np.array([0.0, -1.5, -2.25, 0.0], np.float32)) and vocab.merges() is None
    document = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 2**40}}}
    (model_dir / "tokenizer.json").write_text(json.dumps(document))
    with open_checkpoint(model_dir) as ckpt:
        vocab = ckpt.vocabulary()
        assert vocab is not None
        with pytest.raises(LimitExceeded, match="token id"):
            vocab.tokens()


def test_typed_key_values_keep_arrays_lazy() -> None:
    with open_checkpoint(VOCAB_DIR / "ggml-vocab-gpt-2.gguf") as ckpt:
        kv = {k.key: k for k in ckpt.key_values}
        tokens = kv["tokenizer.ggml.tokens"]
        assert tokens.type == ValueType.ARRAY and tokens.value.element_type == ValueType.STRING
        assert kv["general.architecture"].type == ValueType.STRING
