"""Write the fuzz seed corpus ``tests/fuzz/corpus/<target>/`` with the real writers.

    python -m tests.fuzz.make_corpus

Each seed is a small, valid input (a few KiB) of its reader, written by the tool users write
it with: gguf-py's ``GGUFWriter`` (single and split files, every ggml type it knows),
safetensors' ``save_file``, transformers' configs, the ``tokenizers`` library, the
SentencePiece trainer, ``pickle`` and ``torch.save``; the tests hold every seed to opening
cleanly. The long campaign adds the real files of ``../shared/data`` as further seeds
(``scripts/fuzz.sh``).
"""
from __future__ import annotations

import io
import json
import pickle  # noqa: TID251 (writes pickle seeds for the detector; nothing is ever unpickled)
import struct
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from tests.fuzz.targets import CORPUS, SPLIT_NAMES, TINY_LLAMA, pack_parts, tiny_llama_tensors

TOKENS = ["<unk>", "<s>", "</s>", *[chr(c) for c in range(ord("a"), ord("z") + 1)], "▁th", "▁the", "he"]
TEXT = ("the cat sat on the mat. the quick brown fox jumps over the lazy dog.\n"
        "a bird sang in the tree by the sea; five wizards jumped quickly.\n") * 20


def _gguf_bytes(write: object, **kwargs: object) -> bytes:
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        writer = gguf.GGUFWriter(path, "llama", **kwargs)
        write(writer)  # type: ignore[operator]
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def _llama_keys(writer: object, vocab: bool = True) -> None:
    import gguf

    w: gguf.GGUFWriter = writer  # type: ignore[assignment]
    w.add_name("tiny llama")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if vocab:
        w.add_tokenizer_model("llama")
        w.add_token_list(TOKENS)
        w.add_token_scores([float(-i) for i in range(len(TOKENS))])
        w.add_token_types([2, 3, 3, *([1] * (len(TOKENS) - 3))])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)


def gguf_seeds() -> dict[str, bytes]:
    import gguf
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(0)

    def tiny_llama(w: gguf.GGUFWriter) -> None:
        _llama_keys(w)
        w.add_tensor("token_embd.weight", rng.standard_normal((len(TOKENS), 32)).astype(np.float32))
        for layer in range(2):
            for role, shape in (("attn_q", (32, 32)), ("attn_k", (16, 32)), ("ffn_down", (32, 64)), ("attn_norm", (32,))):
                w.add_tensor(f"blk.{layer}.{role}.weight", rng.standard_normal(shape).astype(np.float16))
        w.add_tensor("output_norm.weight", np.ones(32, np.float32))

    types = [t for t in T if t not in (T.Q8_1, T.Q8_K)]  # every type gguf knows but ggml's dot-product intermediates

    def some_types(chosen: list[T]) -> object:
        def write(w: gguf.GGUFWriter) -> None:
            _llama_keys(w, vocab=False)
            w.add_custom_alignment(64)
            for qtype in chosen:
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                row = 256 if 256 % block == 0 else block
                raw = rng.integers(0, 256, size=(2, row // block * size), dtype=np.uint8)
                if qtype in (T.F32, T.F16, T.F64):  # finite values for the float types
                    raw = rng.standard_normal((2, row)).astype({T.F32: "<f4", T.F16: "<f2", T.F64: "<f8"}[qtype]).view(np.uint8)
                w.add_tensor(f"t.{qtype.name}", raw, raw_dtype=qtype)
        return write

    def vocab_only(w: gguf.GGUFWriter) -> None:
        _llama_keys(w)
        w.add_token_merges(["▁ t", "h e", "▁t h"])

    def arrays(w: gguf.GGUFWriter) -> None:
        w.add_block_count(2)
        w.add_embedding_length(32)
        w.add_array("llama.attention.head_count", [4, 4])
        w.add_array("llama.attention.head_count_kv", [2, 0])
        w.add_array("llama.feed_forward_length", [64, 48])
        w.add_bool("general.flag", True)
        w.add_array("general.tags", ["a", "b"])
        w.add_float64("general.f64", 0.5)
        w.add_int64("general.i64", -3)
        w.add_tensor("blk.0.attn_norm.weight", np.ones(32, np.float32))

    # Three types a file: the read path decodes the first few tensors of each (targets.ROWS_OF_TENSORS).
    typed = {f"types-{i // 3:02d}.gguf": _gguf_bytes(some_types(types[i:i + 3])) for i in range(0, len(types), 3)}
    return {"tiny-llama.gguf": _gguf_bytes(tiny_llama), "vocab-only.gguf": _gguf_bytes(vocab_only),
            "arrays.gguf": _gguf_bytes(arrays), **typed}


def split_seeds() -> dict[str, bytes]:
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        writer = gguf.GGUFWriter(Path(tmp) / "model.gguf", "llama", split_max_tensors=2)
        _llama_keys(writer)
        for i in range(3):
            writer.add_tensor(f"blk.{i}.attn_norm.weight", np.full(32, i, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        parts = [(Path(tmp) / name).read_bytes() for name in SPLIT_NAMES]
    return {"two-parts.bin": pack_parts(*parts)}


def safetensors_seeds() -> dict[str, bytes]:
    import torch
    from safetensors.torch import save

    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 8, generator=generator)
    typed = {f"t.{dtype}": values.to(dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                          torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.int32)}
    typed |= {"t.uint8": (values * 10).to(torch.uint8), "t.bool": values > 0, "t.int64": (values * 100).to(torch.int64),
              "t.empty": torch.zeros(0, 8)}
    llama = {name: torch.from_numpy(array) for name, array in tiny_llama_tensors().items()}
    return {"dtypes.safetensors": save(typed, metadata={"format": "pt", "base_model": "org/base"}),
            "llama-names.safetensors": save(llama, metadata={"format": "pt"})}


def config_seeds() -> dict[str, bytes]:
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    tiny = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=32, max_position_embeddings=64)
    configs = {
        "llama.json": LlamaConfig(**tiny, architectures=["LlamaForCausalLM"]),
        "mistral.json": MistralConfig(**tiny, architectures=["MistralForCausalLM"]),
        "qwen2.json": Qwen2Config(**tiny, architectures=["Qwen2ForCausalLM"]),
        "gemma.json": GemmaConfig(**tiny, head_dim=4, architectures=["GemmaForCausalLM"]),
    }
    out = {name: config.to_json_string().encode() for name, config in configs.items()}
    out["multimodal.json"] = json.dumps({"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
                                         "text_config": dict(TINY_LLAMA), "base_model": ["org/a", "org/b"]}).encode()
    gptq = dict(TINY_LLAMA, quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                                                 "sym": True}, head_dim=None, rope_theta=10000.0)
    out["gptq-nulls.json"] = json.dumps(gptq, indent=2).encode()
    return out


def index_seeds() -> dict[str, bytes]:
    tensors = tiny_llama_tensors()
    names = sorted(tensors)
    weight_map = {n: ("model-00001-of-00002.safetensors" if i < len(names) // 2 else "model-00002-of-00002.safetensors")
                  for i, n in enumerate(names)}
    total = sum(a.nbytes for a in tensors.values())
    return {"index.json": json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2,
                                     sort_keys=True).encode()}


def tokenizer_json_seeds() -> dict[str, bytes]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out = {}
    kinds = {"bpe.json": (models.BPE(unk_token="<unk>"), trainers.BpeTrainer),
             "wordpiece.json": (models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer),
             "unigram.json": (models.Unigram(), trainers.UnigramTrainer),
             "wordlevel.json": (models.WordLevel(unk_token="<unk>"), trainers.WordLevelTrainer)}
    for name, (model, trainer_class) in kinds.items():
        tokenizer = Tokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        special = ["<unk>", "<s>", "</s>"] if "piece" not in name else ["[UNK]", "[CLS]", "[SEP]"]
        trainer = trainer_class(vocab_size=60, special_tokens=special, **({"unk_token": "<unk>"} if "unigram" in name else {}))
        tokenizer.train_from_iterator(TEXT.splitlines(), trainer=trainer)
        out[name] = tokenizer.to_str(pretty=True).encode()
    return out


def tokenizer_config_seeds() -> dict[str, bytes]:
    added = {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
             "single_word": False}
    return {"tokenizer_config.json": json.dumps({"add_bos_token": True, "bos_token": added, "eos_token": "</s>",
                                                 "unk_token": "<unk>", "pad_token": None, "model_max_length": 64,
                                                 "tokenizer_class": "LlamaTokenizer"}, indent=2).encode(),
            "special_tokens_map.json": json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"},
                                                   "unk_token": "<unk>"}).encode()}


def sentencepiece_seeds() -> dict[str, bytes]:
    import sentencepiece

    out = {}
    for kind in ("unigram", "bpe"):
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TEXT.splitlines()), model_writer=model,
                                                 vocab_size=40, model_type=kind, minloglevel=2,
                                                 normalization_rule_name="identity")
        out[f"{kind}.model"] = model.getvalue()
    return out


def llama2c_seeds() -> dict[str, bytes]:
    """llama2.c's legacy ``export.py`` layout: 7 int32, then float32 slabs in its order."""
    rng = np.random.default_rng(0)
    out = {}
    for name, vocab in (("shared.bin", 32), ("unshared.bin", -32)):
        dim, hidden, layers, heads, kv_heads, seq = 16, 24, 2, 4, 2, 8
        kv = dim * kv_heads // heads
        per_layer = dim + dim * dim + 2 * kv * dim + dim * dim + dim + 3 * hidden * dim
        floats = abs(vocab) * dim + layers * per_layer + dim + seq * (dim // heads)
        floats += abs(vocab) * dim if vocab < 0 else 0
        out[name] = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq) + \
            rng.standard_normal(floats).astype("<f4").tobytes()
    return out


def pickle_seeds() -> dict[str, bytes]:
    import torch

    state = OrderedDict([("w", [1.0, 2.0]), ("b", (3, "x"))])
    out = {f"protocol-{p}.bin": pickle.dumps(state, protocol=p) for p in range(6)}
    for name, zipped in (("torch-zip.bin", True), ("torch-legacy.bin", False)):
        buffer = io.BytesIO()
        torch.save({"w": torch.arange(4, dtype=torch.float32)}, buffer, _use_new_zipfile_serialization=zipped)
        out[name] = buffer.getvalue()
    return out


BUILDERS = {"gguf": gguf_seeds, "gguf-split": split_seeds, "safetensors": safetensors_seeds, "config": config_seeds,
            "index": index_seeds, "tokenizer-json": tokenizer_json_seeds, "tokenizer-config": tokenizer_config_seeds,
            "tokenizer-model": sentencepiece_seeds, "llama2c": llama2c_seeds, "pickle": pickle_seeds}


def main() -> None:
    for target, build in BUILDERS.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in build().items():
            (directory / name).write_bytes(data)
            print(f"{target}/{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
