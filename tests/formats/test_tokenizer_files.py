"""Tokenizer-only inputs (tokenizer.json, tokenizer.model, tokenizer folders): real files, hostile files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from provenance.errors import CheckpointError, MalformedCheckpoint
from provenance.formats import detect_format, open_checkpoint
from provenance.formats.tokenizer_json import parse_tokenizer_json
from provenance.formats.vocabulary import CHUNK, checkpoint_vocabulary, token_list_sha256
from tests.conftest import LLAMA2_SPM, VOCAB_DIR
from tests.refdb.test_refdb import run_main


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Meta's Llama 2 tokenizer.model saved by transformers: tokenizer.json + configs, no weights."""
    from transformers import LlamaTokenizerFast

    src = tmp_path_factory.mktemp("spm")
    shutil.copy(LLAMA2_SPM, src / "tokenizer.model")
    out = tmp_path_factory.mktemp("hf-tokenizer")
    LlamaTokenizerFast.from_pretrained(src).save_pretrained(out)
    (out / "tokenizer.model").unlink(missing_ok=True)
    return out


def gguf_reference() -> tuple[str, dict[str, int]]:
    with open_checkpoint(VOCAB_DIR / "ggml-vocab-llama-spm.gguf") as ckpt:
        vocab = checkpoint_vocabulary(ckpt)
    assert vocab is not None
    return vocab.tokens_sha256, vocab.special_tokens


def test_every_tokenizer_input_reads_the_same_vocabulary(hf_tokenizer: Path, tmp_path: Path) -> None:
    sha, special = gguf_reference()
    spm_folder = tmp_path / "spm-only"
    spm_folder.mkdir()
    shutil.copy(LLAMA2_SPM, spm_folder / "tokenizer.model")
    inputs = {hf_tokenizer: "tokenizer-directory", hf_tokenizer / "tokenizer.json": "tokenizer-json",
              LLAMA2_SPM: "sentencepiece", spm_folder: "tokenizer-directory"}
    for path, kind in inputs.items():
        assert detect_format(str(path)) == kind
        with open_checkpoint(path) as ckpt:
            vocab = checkpoint_vocabulary(ckpt)
            assert ckpt.format == kind and not ckpt.tensors and vocab is not None
            assert vocab.tokens_sha256 == sha, path
            assert {k: vocab.special_tokens[k] for k in ("bos", "eos", "unknown")} == \
                {k: special[k] for k in ("bos", "eos", "unknown")}, path


def test_inspect_and_identify_take_a_tokenizer_alone(hf_tokenizer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "inspect", "--json", str(hf_tokenizer), str(LLAMA2_SPM))
    assert code == 0, err
    reports = json.loads(out)["reports"]
    assert [r["tokenizer"]["source"] for r in reports] == ["tokenizer.json", "sentencepiece"]
    assert {r["tokenizer"]["vocab_size"] for r in reports} == {32000} and all(r["summary"]["tensors"] == 0 for r in reports)
    code, out, err = run_main(capsys, "identify", "--json", str(hf_tokenizer / "tokenizer.json"))
    doc = json.loads(out)
    assert code == 0 and doc["decision"]["family"] == "llama-2" and doc["decision"]["signal"] == "tokenizer"
    assert "by tokenizer (identical" in err and "does not show that the weights derive" in err


def test_a_folder_with_neither_weights_nor_tokenizer_is_a_clean_error(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "README.md").write_text("nothing here")
    for command in ("identify", "inspect"):
        code, _, err = run_main(capsys, command, str(tmp_path))
        assert code == 2 and str(tmp_path) in err and "directory" in err and "Traceback" not in err


HOSTILE_JSON = {
    "not-json": (b"{\"model\": ", "tokenizer.json"),
    "model-missing": (b'{"added_tokens": [], "version": "1.0"}', "model"),
    "vocab-wrong-type": (b'{"model": {"type": "BPE", "vocab": [1, 2], "merges": []}}', "model.vocab[0]"),
    "vocab-list-for-bpe": (b'{"model": {"type": "BPE", "vocab": [["a", 0.5]], "merges": []}}', "model.vocab"),
    "negative-id": (b'{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}}', "model.vocab.a"),
    "id-beyond-the-cap": (b'{"model": {"type": "BPE", "vocab": {"a": 0, "b": 99999999999}, "merges": []}}', "model.vocab.b"),
    "id-far-beyond": (b'{"model": {"type": "BPE", "vocab": {"a": 0, "b": 999999}, "merges": []}}', "model.vocab"),
    "two-tokens-one-id": (b'{"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}}', "model.vocab"),
    "duplicate-key": (b'{"model": {"type": "BPE", "vocab": {"a": 0, "a": 1}, "merges": []}}', "tokenizer.json"),
    "bad-merge": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [3]}}', "model.merges[0]"),
    "added-overrides": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},'
                        b' "added_tokens": [{"id": 0, "content": "<s>"}]}', "added_tokens[0]"),
    "unigram-bad-entry": (b'{"model": {"type": "Unigram", "vocab": [["a", "x"]]}}', "model.vocab[0][1]"),
    "unknown-model": (b'{"model": {"type": "Magic", "vocab": {}}}', "model.type"),
    # A duplicate key anywhere could change what is read (which vocabulary, which id, which
    # added token): each is refused, wherever it stands.
    "duplicate-top-level-key": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},'
                                b' "model": {"type": "BPE", "vocab": {"b": 0}, "merges": []}}', "tokenizer.json"),
    "duplicate-model-key": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "vocab": {"b": 0}, "merges": []}}',
                            "tokenizer.json"),
    "duplicate-added-token-key": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},'
                                  b' "added_tokens": [{"id": 1, "content": "<s>", "id": 0}]}', "tokenizer.json"),
    "merge-pair-not-strings": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "b"], ["a", 3]]}}',
                               "model.merges[1][1]"),
    "merge-of-three": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "b"], ["a", "b", "c"]]}}',
                       "model.merges[1]"),
    # The merges are checked in the pass that hashes them: the caps count UTF-8 bytes
    # (21,846 three-byte characters are 65,538 bytes, over the 65,536 cap), whatever the form,
    # the model type, or the chunk of the list the bad item sits in.
    "merge-token-over-the-cap": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "b"], ["a", "'
                                 + "\u20ac".encode() * 21846 + b'"]]}}', "model.merges[1][1]"),
    "merge-string-over-the-cap": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b", "'
                                  + "\u20ac".encode() * 43692 + b'"]}}', "model.merges[1]"),
    "merge-in-the-second-chunk": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ['
                                  + b'["a", "b"], ' * 65539 + b'["a", null]]}}', "model.merges[65539][1]"),
    "merges-of-another-model-type": (b'{"model": {"type": "WordPiece", "vocab": {"a": 0}, "merges": [3]}}',
                                     "model.merges[0]"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_tokenizer_json_is_one_line_with_file_and_field(case: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data, field = HOSTILE_JSON[case]
    path = tmp_path / "tokenizer.json"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    assert info.value.field == field and info.value.path == str(path)
    code, _, err = run_main(capsys, "identify", str(path))
    assert code == 2 and err.count("\n") == 1 and "tokenizer.json" in err and "field" in err


def test_sentencepiece_reader_matches_the_sentencepiece_package() -> None:
    sentencepiece = pytest.importorskip("sentencepiece")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(LLAMA2_SPM))
    with open_checkpoint(LLAMA2_SPM) as ckpt:
        vocab = checkpoint_vocabulary(ckpt)
    assert vocab is not None and vocab.scores is not None and len(vocab) == processor.get_piece_size()
    assert vocab.tokens == [processor.id_to_piece(i).encode() for i in range(len(vocab))]
    assert np.array_equal(vocab.scores, np.array([processor.get_score(i) for i in range(len(vocab))], np.float32))
    assert vocab.special_tokens == {"unknown": processor.unk_id(), "bos": processor.bos_id(), "eos": processor.eos_id()}


def test_truncated_and_mutated_sentencepiece_models_fail_cleanly(tmp_path: Path) -> None:
    data = LLAMA2_SPM.read_bytes()
    path = tmp_path / "tokenizer.model"
    rng = np.random.default_rng(0)
    cuts = sorted({*rng.integers(1, len(data), 150).tolist(), 1, 2, 3, 5, 9, len(data) - 1})
    mutants = [data[:n] for n in cuts]
    for _ in range(100):  # random byte flips: lengths and keys that lie
        buf = bytearray(data)
        for at in rng.integers(0, len(buf), 4).tolist():
            buf[at] = int(rng.integers(0, 256))
        mutants.append(bytes(buf))
    failures = 0
    for mutant in mutants:
        path.write_bytes(mutant)
        try:
            with open_checkpoint(path) as ckpt:
                assert checkpoint_vocabulary(ckpt) is not None  # a prefix ending on a piece boundary is still a model
        except CheckpointError as exc:
            failures += 1
            assert exc.path == str(path)
    assert failures > len(cuts) // 2


def test_a_length_that_lies_names_its_field_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.model"
    piece = b"\x0a\x03abc\x15\x00\x00\x80\x3f"  # piece "abc", score 1.0
    path.write_bytes(b"\x0a" + bytes([len(piece)]) + piece + b"\x0a\xff\xff\xff\x7f" + b"\x0a\x01")
    with pytest.raises(MalformedCheckpoint) as info:
        open_checkpoint(path)
    assert info.value.field == "pieces[1]" and info.value.offset == len(piece) + 3


def test_refdb_add_a_tokenizer_alone(hf_tokenizer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "refdb", "add", str(hf_tokenizer), "--id", "my-tokenizer", "--family", "mine",
                            "--refdb", str(tmp_path))
    assert code == 0 and "tokenizer" in err and "weight-fingerprint" not in err, err
    code, out, err = run_main(capsys, "identify", "--json", "--refdb", str(tmp_path), str(LLAMA2_SPM))
    doc = json.loads(out)
    assert code == 0 and doc["decision"]["entry_id"] == "my-tokenizer" and doc["decision"]["signal"] == "tokenizer"


def test_tokenizer_json_reads_gaps_surrogates_and_both_merge_forms_exactly(tmp_path: Path) -> None:
    """The fast paths of the reader (C loops, a strict UTF-8 pass) give what the format says
    for the rare cases too: a lone surrogate (JSON allows ``"\\ud800"``) kept as its bytes, an
    id gap filled with ``[PAD<id>]``, merges written as strings or as pairs, and the unknown
    token found among the added tokens."""
    vocab = {"a": 0, "b": 1, "\ud800x": 2, "ab": 4}
    added = [{"id": 5, "content": "<unk>"}, {"id": 1, "content": "b"}]
    for merges in (["a b", "ab \ud800x"], [["a", "b"], ["ab", "\ud800x"]]):
        path = tmp_path / "tokenizer.json"
        path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges, "unk_token": "<unk>"},
                                    "added_tokens": added}))
        with open_checkpoint(path) as ckpt:
            read = checkpoint_vocabulary(ckpt)
        assert read is not None
        assert read.tokens == [b"a", b"b", b"\xed\xa0\x80x", b"[PAD3]", b"ab", b"<unk>"]
        # an input's merges are read by count and hash, as a GGUF's; the list where asked for
        assert read.merges is None and read.merges_count == 2
        assert read.merges_sha256 == token_list_sha256([b"a b", b"ab \xed\xa0\x80x"])
        assert parse_tokenizer_json(path.read_bytes(), str(path)).merges == [b"a b", b"ab \xed\xa0\x80x"]
        assert read.special_tokens == {"unknown": 5}


def test_a_vocabulary_in_id_order_takes_added_tokens_and_gaps_alike(tmp_path: Path) -> None:
    """The usual file lists ids 0..n-1 in order (read without an index by id): added tokens
    that restate an entry, lie beyond it with a gap, or contradict it read as in any order."""
    added = [{"id": 1, "content": "b"}, {"id": 4, "content": "<x>"}]
    tokens = {}
    for vocab in ({"a": 0, "b": 1, "c": 2}, {"b": 1, "c": 2, "a": 0}):  # in id order, then not
        path = tmp_path / "tokenizer.json"
        path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": added}))
        tokens[len(tokens)] = parse_tokenizer_json(path.read_bytes(), str(path)).tokens
        path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []},
                                    "added_tokens": [*added, {"id": 2, "content": "z"}]}))
        with pytest.raises(MalformedCheckpoint) as info:
            parse_tokenizer_json(path.read_bytes(), str(path))
        assert info.value.field == "added_tokens[2]" and "already the token b'c'" in str(info.value)
    assert tokens[0] == tokens[1] == [b"a", b"b", b"c", b"[PAD3]", b"<x>"]


MERGE_LISTS = {
    "pairs over three chunks": [[f"t{i}", "\u00e9\u20ac\U0001f600"[: i % 4]] for i in range(2 * CHUNK + 5)],
    "a space inside a pair's token": [["a b", "c"], ["d", " "], ["e", "f"]],
    "strings, a newline in one": ["a b", "c\nd e", "\U0001f600 x"],
    "strings and pairs mixed": ["a b", ["c", "d"], "e f"],
    "lone surrogates and empty tokens": [["\ud800", ""], ["", "\udfff"], ["x", "y"]],
    "tokens at the byte cap": [["a" * 65536, "\u20ac" * 21845], ["b", "c"]],
}


@pytest.mark.parametrize("case", sorted(MERGE_LISTS))
def test_merges_hash_as_the_list_of_their_encodings(case: str, tmp_path: Path) -> None:
    """The merges' one-pass check and hash (no object per merge) equals the list hash of each
    merge encoded on its own, for every layout its fast path does not take as well."""
    merges = MERGE_LISTS[case]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": merges}}))
    expected = [(m if isinstance(m, str) else " ".join(m)).encode("utf-8", "surrogatepass") for m in merges]
    by_hash = parse_tokenizer_json(path.read_bytes(), str(path), keep_merges=False)
    listed = parse_tokenizer_json(path.read_bytes(), str(path))
    assert listed.merges == expected and by_hash.merges is None
    assert by_hash.merges_count == listed.merges_count == len(merges)
    assert by_hash.merges_sha256 == listed.merges_sha256 == token_list_sha256(expected)
