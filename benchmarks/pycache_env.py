"""How the startup benchmarks treat Python's bytecode cache, the same way for every code they time.

An installed package's modules are compiled to bytecode once: pip byte-compiles a wheel at
install, and an editable install writes ``__pycache__`` on first import. A process that
finds no bytecode compiles every module it imports from source: ~300 of this package's
modules for ``compare``, ~0.3 s of CPU in each run (docs/benchmarks.md, "Fixed costs per
process"). A shell that sets ``PYTHONDONTWRITEBYTECODE=1`` (this project's shared
machine does) makes every run pay that, which no installed copy does. So the children of a
startup benchmark run with Python's ordinary caching, after one untimed warm-up run of
each code that writes it; ``--no-bytecode-cache`` measures the other way instead: an
empty ``PYTHONPYCACHEPREFIX`` that is never written, so every module is compiled in every
run (the figures taken before this file existed).
"""
from __future__ import annotations

import argparse
import tempfile


def child_env(env: dict[str, str], bytecode_cache: bool) -> dict[str, str]:
    """``env`` for timed children: Python's bytecode cache on (written beside the sources,
    as installs have it), or off and unreadable (every module compiled in every run)."""
    out = dict(env)
    if bytecode_cache:
        out.pop("PYTHONDONTWRITEBYTECODE", None)
        out.pop("PYTHONPYCACHEPREFIX", None)
    else:
        out["PYTHONDONTWRITEBYTECODE"] = "1"
        out["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="bench-no-bytecode-")  # stays empty
    return out


def describe(env: dict[str, str]) -> str:
    """One line for the benchmark's header: which way the children ran."""
    if env.get("PYTHONDONTWRITEBYTECODE"):
        return "bytecode cache off: every module compiled from source in every run"
    return "bytecode cache on (as installed): one untimed warm-up run of each code wrote it"


def add_option(parser: argparse.ArgumentParser) -> None:
    """``--no-bytecode-cache`` on a benchmark's parser."""
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="compile every module from source in every run (PYTHONDONTWRITEBYTECODE with an "
                             "empty PYTHONPYCACHEPREFIX), as runs under such a shell did")

