"""The reference database: sources decode and cross-check, entries round-trip, reads stay small."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from provenance.formats import open_checkpoint
from provenance.formats.vocabulary import checkpoint_vocabulary, token_list_sha256
from provenance.refdb import RefDB, RefDBError, build_entry, default_refdb_path
from provenance.refdb.positions import sample_spans
from provenance.refdb.sampler import ReadMeter, read_flat, read_spans, transposed_positions
from provenance.refdb.schema import decode_entry, encode_entry
from provenance.refdb.sources import vocabulary_from_belladore_npm
from provenance.refdb.tokfp import CandidateVocabulary, compare_vocabulary, fingerprint_vocabulary
from tests.conftest import LLAMA2_SPM, QUANT_DIR, ROOT, SHARED_DATA, VOCAB_DIR

NPM = SHARED_DATA / "tokenizers-npm"
LLAMA_SPM_GGUF = VOCAB_DIR / "ggml-vocab-llama-spm.gguf"


@pytest.fixture(scope="module")
def shipped() -> RefDB:
    return RefDB()


def test_npm_sentencepiece_and_gguf_llama2_vocabularies_agree() -> None:
    npm = vocabulary_from_belladore_npm(str(NPM / "llama-tokenizer-js-1.2.2.tgz"))
    with open_checkpoint(LLAMA2_SPM) as spm_ckpt:  # our bounded protobuf reader, no sentencepiece package
        spm = checkpoint_vocabulary(spm_ckpt)
    with open_checkpoint(LLAMA_SPM_GGUF) as ckpt:
        gguf = checkpoint_vocabulary(ckpt)
        scores_sha = ckpt.metadata["tokenizer.ggml.scores"].sha256()
    assert gguf is not None and spm is not None and len(npm) == len(spm) == len(gguf) == 32000
    assert npm.tokens == spm.tokens == gguf.tokens
    assert len(npm.merges or []) == 61249 and npm.merges[0] == "▁ t".encode()
    # the SentencePiece scores hash like the GGUF's stored FLOAT32 array
    assert fingerprint_vocabulary(spm).scores_sha256 == scores_sha


def test_mistral_vocabulary_differs_from_llama2() -> None:
    llama = vocabulary_from_belladore_npm(str(NPM / "llama-tokenizer-js-1.2.2.tgz"))
    mistral = vocabulary_from_belladore_npm(str(NPM / "mistral-tokenizer-js-1.0.0.tgz"))
    assert len(mistral) == 32000 and len(mistral.merges or []) == 58980
    assert token_list_sha256(mistral.tokens) != token_list_sha256(llama.tokens)
    rel = compare_vocabulary(CandidateVocabulary(mistral), fingerprint_vocabulary(llama))
    # they share the byte tokens and many pieces, but at other ids: not the same tokenizer, no lineage rule
    assert rel.relation == "shares-tokens" and not rel.lineage
    assert rel.same_id_share is not None and rel.same_id_share < 0.1 and rel.aligned_share is not None and rel.aligned_share < 0.05


def test_shipped_database_located_and_complete(shipped: RefDB) -> None:
    assert default_refdb_path().resolve() == (ROOT / "data" / "reference_hashes").resolve()
    ids = set(shipped.ids())
    expected = {"llama-2-tokenizer", "mistral-7b-tokenizer", "llama-2-7b", "llama-2-13b", "llama-2-70b", "mistral-7b-v0.1",
                "mixtral-8x7b-v0.1", "miqu-1-70b", "stories260k", "tiny-llama-f32", "tiny-llama-q4_k_m"}
    expected |= {f"gguf-vocab-{p.name[len('ggml-vocab-'):-len('.gguf')]}" for p in VOCAB_DIR.glob("*.gguf")}
    assert expected <= ids
    for entry in shipped.entries():  # every entry loads, and records where it came from
        assert entry.provenance.get("kind") in ("computed", "published-facts") and entry.provenance.get("sources")
        assert entry.provenance["computed_by"]["tool"] == "provenance"
    miqu, llama70 = shipped.get("miqu-1-70b"), shipped.get("llama-2-70b")
    shape_keys = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "vocab_size")
    assert all(miqu.architecture[k] == llama70.architecture[k] for k in shape_keys)
    assert miqu.architecture["context_length"] == 32764 and llama70.architecture["context_length"] == 4096
    assert miqu.tokenizer is not None and miqu.tokenizer.tokens_sha256 == shipped.get("llama-2-tokenizer").tokenizer.tokens_sha256
    assert shipped.get("mixtral-8x7b-v0.1").architecture["n_expert"] == 8
    assert shipped.get("mistral-7b-v0.1").architecture["n_head_kv"] == 8


def test_shipped_entries_are_small_and_diffable(shipped: RefDB) -> None:
    for entry_id in shipped.ids():  # entries; the calibration file is one row per line (test_tokenizer_rules)
        text = (shipped.directory / f"{entry_id}.json").read_text("utf-8")
        assert json.dumps(json.loads(text), indent=1, sort_keys=True, ensure_ascii=True) + "\n" == text
    assert sum(p.stat().st_size for p in shipped.directory.iterdir()) < 2 * 1024 * 1024


def test_build_script_reproduces_shipped_entries() -> None:
    # entries built from ../shared/data alone (the others need the fetched cache: scripts/fetch_tokenizers.py)
    only = ["llama-2-tokenizer", "llama-2-70b", "miqu-1-70b", "gguf-vocab-phi-3", "gguf-vocab-starcoder", "stories260k"]
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_refdb.py"), "--check", "--only", *only],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all up to date" in result.stdout


def test_entry_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    entry = build_entry(SHARED_DATA / "stories260K" / "stories260K.bin", "s260", "stories")
    text, npz = encode_entry(entry)
    again = decode_entry(text, npz, "mem")
    assert encode_entry(again) == (text, npz)  # byte-stable, including the .npz
    assert [t.name for t in again.weights.tensors] == [t.name for t in entry.weights.tensors]
    assert not any("rope" in t.name for t in entry.weights.tensors)  # deterministic tables prove nothing
    db = RefDB(tmp_path)
    db.write(entry)
    with pytest.raises(RefDBError, match="already exists"):
        db.write(entry)
    npz_path = tmp_path / "s260.npz"
    data = bytearray(npz_path.read_bytes())
    data[-30] ^= 1
    npz_path.write_bytes(bytes(data))
    with pytest.raises(RefDBError, match="sha256"):
        RefDB(tmp_path).get("s260")
    doc = json.loads((tmp_path / "s260.json").read_text())
    doc["schema"] = "provenance.refdb-entry/99"
    (tmp_path / "s260.json").write_text(json.dumps(doc))
    with pytest.raises(RefDBError, match="schema"):
        RefDB(tmp_path).get("s260")


def test_spans_are_block_aligned_and_reads_touch_only_their_blocks() -> None:
    path = QUANT_DIR / "tiny-llama-Q4_K_M.gguf"
    with open_checkpoint(path) as ckpt, open_checkpoint(QUANT_DIR / "tiny-llama-f32.gguf") as ref:
        for name in ("blk.0.ffn_down.weight", "token_embd.weight", "output.weight"):
            info = ckpt.info(name)
            spans = sample_spans(name, info.shape)
            assert np.all(spans.starts % 256 == 0) and spans.length == 256 and len(spans.rows) == 8
            meter = ReadMeter()
            got = read_spans(ckpt, info, spans, meter)
            # exactly one K-quant super-block per span: never a whole row
            assert meter.reads == 8 and meter.bytes_read == 8 * info.block_bytes
            full = ckpt.read_rows(name)
            want = np.stack([full[r, s : s + 256] for r, s in zip(spans.rows, spans.starts, strict=True)])
            assert np.array_equal(got, want)
            exact = np.stack([ref.read_rows(name)[r, s : s + 256] for r, s in zip(spans.rows, spans.starts, strict=True)])
            assert np.corrcoef(got.ravel(), exact.ravel())[0, 1] > 0.95


def test_transposed_reading_recovers_the_original_matrix() -> None:
    with open_checkpoint(SHARED_DATA / "stories260K" / "stories260K.bin") as a, \
            open_checkpoint(SHARED_DATA / "stories260K" / "stories260K.transpose.bin") as b:
        for name in ("blk.0.ffn_gate.weight", "blk.1.attn_k.weight", "blk.2.attn_q.weight"):
            info = a.info(name)
            spans = sample_spans(name, info.shape)
            flat, take = transposed_positions(spans, info.shape)
            values = read_flat(b, b.info(name), flat, ReadMeter()).reshape(len(spans.rows), take)
            original = read_spans(a, info, spans, ReadMeter())[:, :take]
            assert np.array_equal(values, original)
            assert not np.array_equal(read_spans(b, b.info(name), spans, ReadMeter())[:, :take], original)


def test_tokenizer_relations_on_real_vocabularies() -> None:
    def vocab(name: str):  # type: ignore[no-untyped-def]
        with open_checkpoint(VOCAB_DIR / f"ggml-vocab-{name}.gguf") as ckpt:
            return checkpoint_vocabulary(ckpt)

    llama, phi3, starcoder, refact = vocab("llama-spm"), vocab("phi-3"), vocab("starcoder"), vocab("refact")
    rel = compare_vocabulary(CandidateVocabulary(phi3), fingerprint_vocabulary(llama))
    assert rel.relation == "extends" and rel.exact_prefix and rel.extra_tokens == 64
    rel = compare_vocabulary(CandidateVocabulary(llama), fingerprint_vocabulary(phi3))
    assert rel.relation == "prefix-of"
    rel = compare_vocabulary(CandidateVocabulary(starcoder), fingerprint_vocabulary(refact))
    assert rel.relation == "reordered" and rel.jaccard is not None and 0.98 < rel.jaccard < 1.0
    assert rel.same_id_share is not None and rel.same_id_share < 0.05
    # the tiny-llama test model keeps Llama 2's first 1024 tokens at their ids
    with open_checkpoint(QUANT_DIR / "tiny-llama-f32.gguf") as ckpt:
        tiny = checkpoint_vocabulary(ckpt)
    assert compare_vocabulary(CandidateVocabulary(tiny), fingerprint_vocabulary(llama)).relation == "prefix-of"


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI entry point in-process (subprocesses cost seconds of imports each on 2 cores)."""
    from provenance.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_refdb_cli_add_list_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(QUANT_DIR / "stories260K-Q8_0.gguf")
    code, _, err = run_main(capsys, "refdb", "add", model, "--id", "s-q8", "--family", "stories",
                            "--source", "llamacpp-quant", "--license", "MIT", "--refdb", str(tmp_path))
    assert code == 0, err
    assert "weight-fingerprint" in err
    code, out, _ = run_main(capsys, "refdb", "list", "--json", "--refdb", str(tmp_path))
    assert code == 0 and [e["id"] for e in json.loads(out)] == ["s-q8"]
    code, out, _ = run_main(capsys, "refdb", "show", "s-q8", "--refdb", str(tmp_path))
    shown = json.loads(out)
    assert shown["license"] == "MIT" and shown["provenance"]["source_files"][0]["name"] == "stories260K-Q8_0.gguf"
    code, _, err = run_main(capsys, "refdb", "add", model, "--id", "s-q8", "--refdb", str(tmp_path))
    assert code == 2 and "already exists" in err
    assert run_main(capsys, "refdb", "add", model, "--id", "Bad/Id", "--refdb", str(tmp_path))[0] == 64
    assert run_main(capsys, "refdb", "show", "nope", "--refdb", str(tmp_path))[0] == 2
    code, out, _ = run_main(capsys, "refdb", "list")  # the shipped database, found without --refdb
    assert code == 0 and "llama-2-tokenizer" in out


@pytest.mark.parametrize("tamper", ["unsorted", "repeated", "id outside", "ids short"])
def test_a_tampered_tokenizer_sketch_is_refused(tamper: str) -> None:
    """An entry whose sketch arrays were rewritten (its sha256 updated to match) is refused on
    load: the shares assume the bottom-k distinct hashes in order, with ids in the vocabulary."""
    import hashlib
    import io

    entry = build_entry(VOCAB_DIR / "ggml-vocab-gpt-2.gguf", "gpt2-vocab", "gpt-2")
    text, npz = encode_entry(entry)
    assert npz is not None
    with np.load(io.BytesIO(npz), allow_pickle=False) as loaded:
        arrays = {name: loaded[name].copy() for name in loaded.files}
    hashes, ids = arrays["token_sketch_hashes"], arrays["token_sketch_ids"]
    assert hashes.size > 2
    if tamper == "unsorted":
        hashes[[0, 1]] = hashes[[1, 0]]
    elif tamper == "repeated":
        hashes[1] = hashes[0]
    elif tamper == "id outside":
        ids[0] = entry.tokenizer.vocab_size
    else:
        arrays["token_sketch_ids"] = ids[:-1]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    forged = buffer.getvalue()
    doc = json.loads(text)
    doc["arrays"]["sha256"] = hashlib.sha256(forged).hexdigest()
    with pytest.raises(RefDBError, match="tokenizer sketch"):
        decode_entry(json.dumps(doc), forged, "forged")


def test_the_build_check_tolerates_float64_last_bits_and_nothing_more(tmp_path: Path) -> None:
    """``--check`` passes a rebuild whose float64 weight summaries differ from the shipped ones
    in their last bits (BLAS and SIMD reductions follow the CPU's vector width) and fails one
    off by 1e-6: a summary that moved is a stale entry."""
    import io
    import shutil

    for factor, expected in ((1 + 4e-15, "all up to date"), (1 + 1e-6, "stale: stories260k")):
        out = tmp_path / f"db-{factor}"
        shutil.copytree(ROOT / "data" / "reference_hashes", out)
        arrays = dict(np.load(out / "stories260k.npz"))
        arrays["fp_summaries"] = arrays["fp_summaries"] * factor
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        (out / "stories260k.npz").write_bytes(buffer.getvalue())
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_refdb.py"), "--check", "--only",
                                 "stories260k", "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert expected in result.stdout, result.stdout + result.stderr
