"""Run one fuzz target under atheris (libFuzzer, coverage-guided, in process).

    python -m tests.fuzz.run TARGET [libFuzzer options] [CORPUS_DIR ...]

e.g. ``python -m tests.fuzz.run gguf -runs=1000000 -timeout=60 -rss_limit_mb=2048 work/ tests/fuzz/corpus/gguf``
(``scripts/fuzz.sh`` runs the campaign). The package is instrumented for coverage as it is
imported. A Python exception other than :class:`provenance.errors.ProvenanceError` is a
crash: libFuzzer writes the input as ``crash-<sha1>`` and stops.

Memory: libFuzzer's ``-rss_limit_mb`` catches a process that grows past the limit, but its
``-malloc_limit_mb`` needs sanitizer malloc hooks that a Python process does not have, so
a single large allocation that is never touched would go unseen. The address space is
therefore capped at what the process holds after start-up plus ``--max-alloc-mb`` (2 GiB by
default): any allocation beyond that fails with ``MemoryError``, which is not a
ProvenanceError, so the fuzzer reports it as a crash with its input.

Time: an input that takes more than ``--cpu-limit-s`` (5 s) of CPU raises :class:`SlowInput`,
a crash with its input (see :func:`cpu_bounded`).
"""
from __future__ import annotations

import gc
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import atheris

ALLOC_HEADROOM_MB = 2048
CPU_LIMIT_S = 5.0


class SlowInput(Exception):
    """One input took more CPU time than the limit: a hang, reported as a crash with its input."""


def cpu_bounded(run: Callable[[bytes], str], limit_s: float) -> Callable[[bytes], str]:
    """``run`` with a limit on the CPU time of each input. libFuzzer's ``-timeout`` counts wall
    time, which on a shared machine at ``nice 19`` is mostly time spent waiting for a core (an
    input of 0.3 s of CPU took 6 s of wall there); the CPU limit is the one that says "hang",
    and ``scripts/fuzz.sh`` keeps a wall timeout only for a loop that never returns."""
    def bounded(data: bytes) -> str:
        start = time.process_time()
        outcome = run(data)
        spent = time.process_time() - start
        if spent > limit_s:
            raise SlowInput(f"{spent:.2f} s of CPU on one input (limit {limit_s:g} s)")
        return outcome
    return bounded


def _uninstrumented() -> list[str]:
    """Modules left uninstrumented: those with numba-compiled loops (numba compiles from
    bytecode, and instrumented bytecode does not compile): the codecs (they index only byte
    ranges the readers validated), the GGUF string walk's compiled engine (its Python twin
    is fuzzed, and tests/formats/test_gguf_strings.py holds the two equal) and the numba set-up."""
    codecs = Path(__file__).resolve().parents[2] / "provenance" / "codecs"
    names = ["provenance.jit", "provenance.codecs", "provenance.formats.gguf_strings_native"]
    for path in codecs.rglob("*.py"):
        parts = path.relative_to(codecs.parent.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _instrumented_imports() -> None:
    """Import (and so instrument) the package before anything else imports it."""
    if "provenance" in sys.modules:
        raise RuntimeError("provenance was imported before instrumentation")
    with atheris.instrument_imports(include=["provenance"], exclude=_uninstrumented()):
        import provenance
        import provenance.codecs.dequant
        import provenance.codecs.registry
        import provenance.formats
        import provenance.formats.rows
        import provenance.formats.verify
        import provenance.inspect
        import provenance.tokenizer  # noqa: F401


def _virtual_memory_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def cap_allocations(headroom_mb: int) -> None:
    """Cap the address space at its current size plus ``headroom_mb``."""
    limit = _virtual_memory_bytes() + headroom_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        raise SystemExit(__doc__)
    target_name, rest = argv[1], argv[2:]
    headroom, cpu_limit = ALLOC_HEADROOM_MB, CPU_LIMIT_S
    for arg in list(rest):
        if arg.startswith("--max-alloc-mb="):
            headroom = int(arg.split("=", 1)[1])
            rest.remove(arg)
        elif arg.startswith("--cpu-limit-s="):
            cpu_limit = float(arg.split("=", 1)[1])
            rest.remove(arg)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _instrumented_imports()
    import torch

    torch.set_num_threads(1)  # no thread pools appearing after the cap
    from tests.fuzz.targets import CORPUS, TARGETS, Runner

    runner = Runner(TARGETS[target_name])
    # Warm up before the cap: lazy imports and the compiled kernels the corpus reaches.
    for seed in sorted((CORPUS / target_name).glob("*")):
        runner.run(seed.read_bytes())
    # Start-up objects (torch, numpy, the instrumented package: millions) never die: freezing
    # them keeps the cyclic collector from walking them again at every full collection.
    gc.collect()
    gc.freeze()
    cap_allocations(headroom)
    atheris.Setup([argv[0], *rest], cpu_bounded(runner.run, cpu_limit))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
