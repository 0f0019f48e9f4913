"""How the startup benchmarks treat Python's bytecode cache: as an installed copy has it.

An installed package's modules are compiled to bytecode once: pip byte-compiles a wheel at
install, and an editable install writes ``__pycache__`` on first import. A process that
finds no bytecode compiles every module it imports from source: this package's ~300
modules cost ``compare`` ~0.3 s of CPU in each run (docs/benchmarks.md, "Fixed costs per
process"). A shell that sets ``PYTHONDONTWRITEBYTECODE=1`` (this project's shared machine
does) made every timed run pay that, which no installed copy does. So the children of a
startup benchmark run with Python's ordinary caching, after one untimed warm-up run of
each code that writes it beside that code's sources.
"""
from __future__ import annotations


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for timed children: Python's bytecode cache on, beside the sources."""
    return {k: v for k, v in env.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}


DESCRIPTION = "bytecode cached as installed (one untimed warm-up run of each code wrote it)"
"""One line for a benchmark's header."""
