"""Models named where they live: the Hugging Face cache (written by huggingface_hub's own
download code from a local endpoint) and Ollama's store (laid out as Ollama writes it, with
ollama's real test GGUF), read back; hostile caches and manifests fail with one line."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provenance.cli import run
from provenance.errors import CheckpointError, LimitExceeded, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats import open_checkpoint
from provenance.formats.locators import locate
from provenance.formats.ollama_store import parse_manifest
from provenance.hashing import checkpoint_sha256s
from tests.cli.test_exit_codes import COMMANDS as EXIT_CODE_COMMANDS
from tests.cli.test_exit_codes import _invocations as exit_code_invocations
from tests.conftest import QUANT_DIR, ROOT, SHARED_DATA
from tests.support.gguf_bytes import ARRAY, UINT32, GGUFBytes, gstr
from tests.support.hub_server import Repo, hub_endpoint
from tests.support.ollama_store import REGISTRY_MANIFEST, copy_store, write_ollama_model

OLLAMA_GGUF = SHARED_DATA / "ollama" / "llama-2-tiny-random.gguf"
GGUF = QUANT_DIR / "tiny-llama-f32.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CARD = "---\nbase_model: example-org/base\nlicense: mit\n---\n# tiny\n"


@pytest.fixture(scope="module")
def hub_repos(hf_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Repo]:
    folder = shutil.copytree(hf_llama, tmp_path_factory.mktemp("repo") / "tiny")
    (folder / "README.md").write_text(CARD)
    gguf = tmp_path_factory.mktemp("repo") / "tiny-gguf"
    gguf.mkdir(exist_ok=True)
    shutil.copy(GGUF, gguf / "tiny-llama-f32.gguf")
    (gguf / "README.md").write_text("---\nbase_model: example-org/tiny\nbase_model_relation: quantized\n---\n")
    return {"example-org/tiny": Repo.from_folder(folder, COMMIT),
            "example-org/tiny-gguf": Repo.from_folder(gguf, "f" * 40)}


@pytest.fixture(scope="module")
def hub_cache(hub_repos: dict[str, Repo], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache written by huggingface_hub.snapshot_download itself."""
    from huggingface_hub import snapshot_download

    cache = tmp_path_factory.mktemp("hf-cache")
    with hub_endpoint(hub_repos) as endpoint:
        for repo_id in hub_repos:
            snapshot_download(repo_id, cache_dir=str(cache), endpoint=endpoint)
    return cache


@pytest.fixture
def use_cache(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Point huggingface_hub's cache constant (what HF_HUB_CACHE sets) at a folder."""
    from huggingface_hub import constants

    def use(cache: Path) -> Path:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        return cache

    return use


def _digests(path: str | Path) -> dict[str, str]:
    with open_checkpoint(path) as ckpt:
        return checkpoint_sha256s(ckpt)[1]


def test_the_cache_is_the_one_huggingface_hub_reads(hub_cache: Path) -> None:
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub_cache)
    assert not info.warnings
    repos = {repo.repo_id: repo for repo in info.repos}
    assert set(repos) == {"example-org/tiny", "example-org/tiny-gguf"}
    (revision,) = repos["example-org/tiny"].revisions
    assert revision.commit_hash == COMMIT and revision.refs == frozenset({"main"})
    assert {f.file_name for f in revision.files} >= {"config.json", "model.safetensors", "README.md"}


@pytest.mark.parametrize("name", ["hf:example-org/tiny", "hf:example-org/tiny@main", f"hf:example-org/tiny@{COMMIT}",
                                  "example-org/tiny"])
def test_hf_names_open_the_cached_snapshot(name: str, hub_cache: Path, hf_llama: Path, use_cache, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    use_cache(hub_cache)
    monkeypatch.chdir(tmp_path)  # no local folder named example-org/tiny
    with open_checkpoint(name) as ckpt:
        assert ckpt.format == "hf-directory" and ckpt.location is not None
        assert ckpt.location.source == "hf-cache" and ckpt.location.revision == COMMIT
        assert ckpt.location.name == f"hf:example-org/tiny@{COMMIT}"
        assert Path(ckpt.path).parent.name == "snapshots" or Path(ckpt.path).name == COMMIT
        assert dict(ckpt.metadata_claims)["card.base_model"] == "example-org/base"  # the snapshot's README.md
    assert _digests(name) == _digests(hf_llama)


def test_a_file_inside_a_cached_repo(hub_cache: Path, use_cache) -> None:
    use_cache(hub_cache)
    name = "hf:example-org/tiny-gguf/tiny-llama-f32.gguf"
    with open_checkpoint(name) as ckpt:
        assert ckpt.format == "gguf" and ckpt.location is not None and ckpt.location.revision == "f" * 40
        claims = dict(ckpt.metadata_claims)  # a file in a repo: the repo's card is its card
        assert claims["card.base_model"] == "example-org/tiny" and claims["card.base_model_relation"] == "quantized"
    assert _digests(name) == _digests(GGUF)


def test_a_local_path_wins_over_a_repo_id(hub_cache: Path, use_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_cache(hub_cache)
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "example-org" / "tiny"
    local.parent.mkdir()
    shutil.copy(GGUF, local)
    assert locate("example-org/tiny").source == "path"
    with open_checkpoint("example-org/tiny") as ckpt:
        assert ckpt.format == "gguf" and ckpt.location is None


@pytest.mark.parametrize(("name", "field", "words"), [
    ("hf:example-org/absent", "repo id", "--download fetches it"),
    ("hf:example-org/tiny@v9", "revision", "not in the cache"),
    ("hf:example-org/tiny/absent.gguf", "path", "not in the cached snapshot"),
    ("hf:example-org/tiny/../../x", "path", "plain relative path"),
    ("hf:example-org/tiny@../../x", "revision", "not a branch"),
    ("hf:ex--ample/tiny", "repo id", "not a Hugging Face repo id"),
])
def test_names_the_cache_cannot_resolve(name: str, field: str, words: str, hub_cache: Path, use_cache) -> None:
    use_cache(hub_cache)
    with pytest.raises(UnsupportedCheckpoint) as caught:
        open_checkpoint(name)
    assert caught.value.field == field and words in caught.value.message


def test_a_bare_id_in_no_cache_says_where_it_looked(hub_cache: Path, use_cache, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    use_cache(hub_cache)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedCheckpoint, match="no such file or folder, and no repo example-org/nothing"):
        open_checkpoint("example-org/nothing")


# ----- a hostile cache ---------------------------------------------------------------------------

def _damaged(hub_cache: Path, tmp_path: Path) -> tuple[Path, Path]:
    cache = tmp_path / "cache"
    shutil.copytree(hub_cache, cache, symlinks=True)
    return cache, cache / "models--example-org--tiny"


@pytest.mark.parametrize("damage", ["ref-escapes", "ref-huge", "ref-not-hash", "link-outside", "link-dangling",
                                    "snapshot-outside", "ref-fifo"])
def test_hostile_cache_fails_with_one_line(damage: str, hub_cache: Path, use_cache, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cache, repo = _damaged(hub_cache, tmp_path)
    use_cache(cache)
    snapshot = repo / "snapshots" / COMMIT
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    expected: type[CheckpointError] = MalformedCheckpoint
    if damage == "ref-escapes":
        (repo / "refs" / "main").write_text("../../../../" + "a" * 28)
    elif damage == "ref-huge":
        (repo / "refs" / "main").write_text("a" * 40 + " " * 10_000)
        expected = LimitExceeded
    elif damage == "ref-not-hash":
        (repo / "refs" / "main").write_text("main\n")
    elif damage == "ref-fifo":
        (repo / "refs" / "main").unlink()
        os.mkfifo(repo / "refs" / "main")
        expected = UnsupportedCheckpoint
    elif damage == "link-outside":
        (snapshot / "config.json").unlink()
        (snapshot / "config.json").symlink_to(outside)
    elif damage == "link-dangling":
        (snapshot / "config.json").unlink()
        (snapshot / "config.json").symlink_to("../../blobs/" + "0" * 40)
    elif damage == "snapshot-outside":
        shutil.move(str(snapshot), str(tmp_path / "moved"))
        snapshot.symlink_to(tmp_path / "moved")
    with pytest.raises(expected) as caught:
        open_checkpoint("hf:example-org/tiny")
    assert caught.value.field is not None
    capsys.readouterr()
    assert run(["inspect", "hf:example-org/tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1 and "field" in err[0]


# ----- --download: the only network access, through huggingface_hub ------------------------------

def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provenance.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def test_download_fetches_into_the_cache_then_names_resolve_offline(hub_repos: dict[str, Repo], tmp_path: Path) -> None:
    from huggingface_hub import scan_cache_dir

    cache = tmp_path / "cache"
    with hub_endpoint(hub_repos) as endpoint:
        env = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"}
        offline = _cli(["inspect", "--json", "hf:example-org/tiny"], env)
        assert offline.returncode == 2 and "--download fetches it" in offline.stderr
        assert not (cache / "models--example-org--tiny").exists()  # nothing fetched without --download
        fetched = _cli(["inspect", "--json", "hf:example-org/tiny-gguf/tiny-llama-f32.gguf", "--download"], env)
        assert fetched.returncode == 0, fetched.stderr
        fetched = _cli(["inspect", "--json", "--download", "hf:example-org/tiny"], env)
        assert fetched.returncode == 0, fetched.stderr
    report = json.loads(fetched.stdout)["reports"][0]
    assert report["path"] == "hf:example-org/tiny" and report["format"] == "hf-directory"
    assert {repo.repo_id for repo in scan_cache_dir(cache).repos} == {"example-org/tiny", "example-org/tiny-gguf"}
    # the endpoint is gone: the same name now resolves from the cache alone
    again = _cli(["inspect", "--json", "hf:example-org/tiny"], {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and json.loads(again.stdout)["reports"][0]["tensors"] == report["tensors"]


def test_download_errors_are_input_errors(hub_repos: dict[str, Repo], tmp_path: Path) -> None:
    with hub_endpoint(hub_repos) as endpoint:
        result = _cli(["inspect", "--download", "hf:example-org/absent"],
                      {"HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "download failed" in line


# ----- Ollama ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ollama_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ollama") / "models"
    write_ollama_model(root, OLLAMA_GGUF, "tiny")
    write_ollama_model(root, GGUF, "tiny-llama", tag="f32", namespace="someone")
    return root


@pytest.mark.parametrize(("name", "gguf"), [("ollama:tiny", OLLAMA_GGUF), ("ollama:tiny:latest", OLLAMA_GGUF),
                                            ("ollama:registry.ollama.ai/library/tiny:latest", OLLAMA_GGUF),
                                            ("ollama:someone/tiny-llama:f32", GGUF)])
def test_ollama_names_open_the_gguf_blob(name: str, gguf: Path, ollama_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store))
    with open_checkpoint(name) as ckpt:
        assert ckpt.format == "gguf" and ckpt.location is not None and ckpt.location.source == "ollama"
        assert Path(ckpt.path).parent.name == "blobs"
        assert ckpt.location.revision == "sha256:" + Path(ckpt.path).name.removeprefix("sha256-")
    assert _digests(name) == _digests(gguf)


def test_the_registry_manifest_format_parses() -> None:
    manifest = parse_manifest(REGISTRY_MANIFEST.encode(), "registry-sample")
    assert [layer.media_type.rsplit(".", 1)[1] for layer in manifest.layers] == ["model", "license", "params"]
    assert manifest.layers[0].size == 9608338848 and manifest.config is not None


def _manifest(root: Path, name: str = "tiny") -> Path:
    return root / "manifests" / "registry.ollama.ai" / "library" / name / "latest"


def _move_out(path: Path, elsewhere: Path) -> None:
    """Replace ``path`` by a symlink to where it now lives, outside the store."""
    shutil.move(str(path), str(elsewhere))
    path.symlink_to(elsewhere)


ManifestDamage = Callable[[dict[str, Any], Path, Path], "bytes | None"]
"""Edits the manifest document (or returns raw bytes to write instead) given the store root and
a scratch folder outside it."""


def _layer0(**fields: Any) -> ManifestDamage:
    def damage(document: dict[str, Any], root: Path, scratch: Path) -> None:
        document["layers"][0].update(fields)
    return damage


def _blob0(document: dict[str, Any], root: Path) -> Path:
    return root / "blobs" / document["layers"][0]["digest"].replace(":", "-")


MANIFEST_DAMAGE: dict[str, ManifestDamage] = {
    "digest-traversal": _layer0(digest="sha256:../../../../etc/passwd"),
    "digest-short": _layer0(digest="sha256:abc"),
    "size-string": _layer0(size="1750560"),
    "size-lies": lambda d, root, scratch: d["layers"][0].update(size=d["layers"][0]["size"] + 1),
    "blob-missing": lambda d, root, scratch: _blob0(d, root).unlink(),
    "blob-outside": lambda d, root, scratch: _move_out(_blob0(d, root), scratch / "blob"),
    "huge": lambda d, root, scratch: b" " * (2 << 20) + json.dumps(d).encode(),
    "not-json": lambda d, root, scratch: b'{"schemaVersion":2,',
    "duplicate-key": lambda d, root, scratch: b'{"schemaVersion":2,"schemaVersion":2,"layers":[]}',
    "schema": lambda d, root, scratch: d.update(schemaVersion=1),
    "layers-object": lambda d, root, scratch: d.update(layers={"0": d["layers"][0]}),
    "no-model": lambda d, root, scratch: d.update(layers=d["layers"][1:]),
    "list": lambda d, root, scratch: json.dumps({"schemaVersion": 2, "manifests": [],
                                                 "mediaType": "application/vnd.ollama.manifest.list.v2+json"}).encode(),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE) + ["manifest-outside"])
def test_hostile_manifest_fails_with_one_line(damage: str, ollama_store: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_store(ollama_store, tmp_path / "models")
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    path = _manifest(root)
    if damage == "manifest-outside":
        _move_out(path, tmp_path / "manifest")
    else:
        document = json.loads(path.read_text())
        raw = MANIFEST_DAMAGE[damage](document, root, tmp_path)
        path.write_bytes(raw if raw is not None else json.dumps(document).encode())
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint("ollama:tiny")
    assert caught.value.field is not None
    if damage in ("digest-traversal", "digest-short", "size-string"):
        assert caught.value.field.startswith("manifest: layers[0]")
        bad = json.dumps(json.loads(path.read_text())["layers"][0][caught.value.field.rsplit(".", 1)[1]]).encode()
        assert path.read_bytes()[caught.value.offset:].startswith(bad)  # the offset is the bad value's
    capsys.readouterr()
    assert run(["inspect", "ollama:tiny"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "field" in err[0]


@pytest.mark.parametrize("name", ["ollama:../../etc/passwd", "ollama:a/b/c/d", "ollama:tiny:a:b", "ollama:ns.x/tiny",
                                  "ollama:tiny:.."])
def test_invalid_ollama_names(name: str, ollama_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store))
    with pytest.raises(UnsupportedCheckpoint):
        open_checkpoint(name)


def test_every_model_argument_takes_a_store_name(ollama_store: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's model arguments (compare, quantcheck, identify, watermark, refdb, check...) pass
    names through to open_checkpoint: comparing the Ollama name with the file is 'identical'."""
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store))
    out = tmp_path / "cmp"
    assert run(["compare", "ollama:someone/tiny-llama:f32", str(GGUF), "--json", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["kind"] == "identical" and report["candidate"]["path"] == "ollama:someone/tiny-llama:f32"
    assert run(["quantcheck", str(QUANT_DIR / "tiny-llama-Q8_0.gguf"), "-r", "ollama:someone/tiny-llama:f32"]) in (0, 1)
    assert run(["identify", "ollama:tiny"]) in (0, 1)


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A GGUF header claiming a 2^60-element token array (as in tests/cli/test_exit_codes.py)."""
    path = tmp_path / "evil.gguf"
    path.write_bytes(GGUFBytes(kvs=[gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARRAY, UINT32, 1 << 60)]).build())
    return path


@pytest.mark.parametrize("name", EXIT_CODE_COMMANDS)
def test_every_command_reads_store_names_through_the_readers(name: str, hostile: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The exit-code table of every command with a model argument, the hostile GGUF named by its
    Ollama name: each command resolves the name and the GGUF reader refuses the blob (exit 2, one line)."""
    root = tmp_path / "models"
    write_ollama_model(root, hostile, "evil")
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    args = [("ollama:evil" if arg == str(hostile) else arg) for arg in exit_code_invocations(tmp_path, hostile)[name]]
    assert "ollama:evil" in args
    capsys.readouterr()
    assert run(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "sha256-" in lines[0] and "tokenizer.ggml.tokens" in lines[0]
