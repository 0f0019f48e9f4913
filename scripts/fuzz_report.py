"""Summarise a fuzz campaign: executions, speed, libFuzzer coverage, and the line coverage of
each reader's own modules reached by the campaign's corpus.

    python scripts/fuzz_report.py [--root .cache/fuzz] [TARGET ...]

For each target it reads ``<root>/<target>/log.txt`` (libFuzzer's final stats: executions,
exec/s, edges ``cov`` and features ``ft``, and any crash, timeout or out-of-memory line) and
replays the corpus the campaign grew (``<root>/<target>/corpus`` and the seeds) through the
same target under coverage.py, reporting the share of lines executed in the modules that
read that input (``READERS`` below). Prints a Markdown table for docs/security.md.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_COMMON = ("formats/detect.py", "formats/files.py")
READERS = {
    "gguf": ("formats/gguf_header.py", "formats/gguf_reader.py", "formats/cursor.py", "formats/gguf_strings.py"),
    "gguf-split": ("formats/gguf_reader.py", "formats/gguf_header.py"),
    "safetensors": ("formats/safetensors_reader.py", "formats/jsonsafe.py", "formats/schema.py"),
    "config": ("formats/safetensors_reader.py", "formats/schema.py", "names/arch.py", "names/canonical.py"),
    "index": ("formats/safetensors_reader.py", "formats/schema.py"),
    "tokenizer-json": ("formats/tokenizer_json.py", "formats/schema.py", "formats/jsonsafe.py"),
    "tokenizer-config": ("formats/tokenizer_json.py", "formats/tokenizer_files.py"),
    "tokenizer-model": ("formats/sentencepiece_model.py",),
    "llama2c": ("formats/llama2c_reader.py",),
    "pickle": ("formats/pickle_scan.py",),
}
"""The modules that parse each target's input (the detector and safe opening come with all)."""


def final_stats(log: Path) -> dict[str, str]:
    text = log.read_text(errors="replace") if log.is_file() else ""
    stats: dict[str, str] = {}
    done = re.findall(r"^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+)", text, re.MULTILINE)
    if done:
        stats["executions"], stats["cov"], stats["ft"] = done[-1]
    for key in ("number_of_executed_units", "average_exec_per_sec", "peak_rss_mb", "slowest_unit_time_sec"):
        found = re.findall(rf"stat::{key}:\s+(\d+)", text)
        if found:
            stats[key] = found[-1]
    problems = re.findall(r"^(==\d+== ERROR: libFuzzer: .*|.*Uncaught Python exception.*|SUMMARY: .*)$", text, re.MULTILINE)
    stats["problems"] = "; ".join(problems) or "none"
    return stats


def line_coverage(target: str, root: Path) -> tuple[int, dict[str, float]]:
    """``(inputs replayed, {module: % of lines executed})``, measured in a fresh process so the
    modules' import-time lines count as they do for the fuzzer."""
    result = subprocess.run([sys.executable, __file__, "--replay", target, "--root", str(root)],
                            capture_output=True, text=True, check=True)
    document = json.loads(result.stdout)
    return document["inputs"], document["shares"]


def replay(target: str, root: Path) -> None:
    import coverage

    cov = coverage.Coverage(source=[str(ROOT / "provenance")], data_file=None)
    cov.start()
    from tests.fuzz.targets import CORPUS, TARGETS, Runner

    # libFuzzer writes new inputs to the first corpus folder only: the seeds (ours and the real
    # files scripts/fuzz.sh copies to shared-seeds) are replayed from where they are.
    folders = (root / target / "corpus", root / target / "shared-seeds", CORPUS / target)
    inputs = sorted(p for d in folders if d.is_dir() for p in d.iterdir() if p.is_file())
    runner = Runner(TARGETS[target])
    try:
        for path in inputs:
            runner.run(path.read_bytes())
    finally:
        runner.close()
        cov.stop()
    shares = {}
    for module in (*READERS[target], *_COMMON):
        _, statements, _, missing, _ = cov.analysis2(str(ROOT / "provenance" / module))
        shares[module] = 100.0 * (len(statements) - len(missing)) / max(1, len(statements))
    print(json.dumps({"inputs": len(inputs), "shares": shares}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*")
    parser.add_argument("--root", type=Path, default=ROOT / ".cache" / "fuzz")
    parser.add_argument("--replay", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        replay(args.replay, args.root)
        return 0
    print("| target | executions | exec/s | libFuzzer cov (edges) / ft | inputs replayed | line coverage of its reader modules "
          "| problems |")
    print("|---|---|---|---|---|---|---|")
    for target in args.targets or list(READERS):
        stats = final_stats(args.root / target / "log.txt")
        started = time.perf_counter()
        n_inputs, shares = line_coverage(target, args.root)
        readers = ", ".join(f"`{m.split('/')[-1]}` {v:.0f}%" for m, v in shares.items() if m in READERS[target])
        print(f"| {target} | {stats.get('number_of_executed_units', '?')} | {stats.get('average_exec_per_sec', '?')} | "
              f"{stats.get('cov', '?')} / {stats.get('ft', '?')} | {n_inputs} | {readers} | {stats['problems']} |",
              flush=True)
        print(f"  ({target}: replayed in {time.perf_counter() - started:.0f} s; detect.py "
              f"{shares['formats/detect.py']:.0f}%, files.py {shares['formats/files.py']:.0f}%)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
