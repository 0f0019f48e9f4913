"""From INPUTS to models: walking, grouping, manifests."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from provenance.scan.discover import discover
from provenance.scan.manifest import ManifestError
from tests.conftest import SHARED_DATA
from tests.support.model_corpus import Corpus


def test_walk_finds_each_model_once_and_skips_the_rest(corpus: Corpus) -> None:
    found = discover([str(corpus.root)])
    assert sorted(u.path for u in found.units) == sorted(os.path.abspath(p) for p in corpus.models.values())
    by_path = {u.path: u for u in found.units}
    split = by_path[os.path.abspath(corpus.models["tiny-split"])]
    assert split.path.endswith("tiny-split-00001-of-00003.gguf") and len(split.members) == 3
    sharded = by_path[os.path.abspath(corpus.models["hf-sharded"])]
    names = {os.path.basename(m.path) for m in sharded.members}
    assert {"config.json", "model.safetensors.index.json"} <= names and sum(n.endswith(".safetensors") for n in names) >= 2
    assert sharded.n_bytes == sum(os.path.getsize(m.path) for m in sharded.members)
    skipped = {os.path.basename(p) for p in found.skipped}
    assert skipped == {"README.md", "LICENSE"}  # the folders' own files belong to their model


def test_real_data_folder(tmp_path: Path) -> None:
    found = discover([str(SHARED_DATA)])
    names = sorted(os.path.basename(u.path) for u in found.units)
    assert len(names) == 28 and "stories260K.bin" in names and "stories260K.transpose.bin" in names
    assert all(n.endswith((".gguf", ".bin")) for n in names)
    skipped = {os.path.basename(p) for p in found.skipped}
    assert {"tokenizer.model", "README.md", "SHA256SUMS", "make_source.py", "llama-tokenizer-js-1.2.2.tgz"} <= skipped
    assert not any(n.endswith((".inp", ".out")) for n in names)


def test_named_files_are_models_whatever_they_hold(corpus: Corpus, tmp_path: Path) -> None:
    note = tmp_path / "notes.txt"
    note.write_text("not a model")
    part2 = corpus.root / "split" / "tiny-split-00002-of-00003.gguf"
    found = discover([str(note), str(tmp_path / "missing.gguf"), str(part2), str(corpus.models["tiny-split"]), str(note)])
    assert [os.path.basename(u.path) for u in found.units] == ["notes.txt", "missing.gguf", "tiny-split-00001-of-00003.gguf"]
    assert found.units[1].members == () and len(found.units[2].members) == 3


def test_directory_links_are_not_followed(corpus: Corpus, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(corpus.root / "gguf", target_is_directory=True)
    assert discover([str(tmp_path)]).units == []


def test_stat_key_follows_size_and_mtime(corpus: Corpus, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(corpus.models["tiny-0.gguf"].read_bytes())
    before = discover([str(path)]).units[0].stat_key
    os.utime(path, ns=(1, 1))
    assert discover([str(path)]).units[0].stat_key != before


def test_manifests(corpus: Corpus, tmp_path: Path) -> None:
    jsonl = corpus.root / "uploads.jsonl"
    jsonl.write_text(json.dumps({"path": "gguf/tiny-0.gguf", "id": "acme/tiny-0", "repo": "acme"}) + "\n\n"
                     + json.dumps({"path": str(corpus.models["hf-llama"])}) + "\n")
    units = discover([str(jsonl)]).units
    assert [u.id for u in units] == ["acme/tiny-0", str(corpus.models["hf-llama"])]
    assert units[0].path == str(corpus.models["tiny-0.gguf"]) and len(units[1].members) >= 2
    table = tmp_path / "uploads.csv"
    table.write_text(f"id,path,owner\nx1,{corpus.models['tiny-1.gguf']},me\n,{corpus.models['tiny-2.gguf']},you\n")
    units = discover([str(table)]).units
    assert [u.id for u in units] == ["x1", str(corpus.models["tiny-2.gguf"])]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("bad.jsonl", '{"path": "a.gguf"}\n{"path": "b.gguf",\n', "(line 2, field json, offset 37)"),
    ("nopath.jsonl", '{"id": "a"}\n', "(line 1, field path, offset 0)"),
    ("twice.jsonl", '{"path": "a", "id": "x"}\n{"path": "b", "id": "x"}\n', "(line 2, field id, offset 0): id 'x' is used twice"),
    ("header.csv", "file,id\na.gguf,x\n", "(line 1, field header, offset 0)"),
])
def test_manifest_errors_name_the_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(ManifestError) as error:
        discover([str(manifest)])
    assert str(error.value).startswith(str(manifest)) and message in str(error.value)
