"""Conventions shared by every command: consoles, the exit codes commands return, and
whether ``--debug`` was given (output files: :mod:`provenance.fileio`)."""
from __future__ import annotations

from enum import IntEnum

import click
from rich.console import Console
from rich.text import Text

from provenance.textsafe import safe_text


class ExitCode(IntEnum):
    """What a command returns; :func:`provenance.cli.main` exits with it (CI gates depend on it)."""

    OK = 0
    FINDINGS = 1
    """The command ran and found something (a violation, a flagged result, a match)."""
    INPUT_ERROR = 2
    """An input could not be used: a malformed or unreadable file (file, field and offset on stderr)."""
    USAGE = 64
    """BSD EX_USAGE: bad options or arguments; kept apart from 1 and 2 so a CI gate never confuses them."""
    SOFTWARE = 70
    """BSD EX_SOFTWARE: a bug in provenance (``--debug`` shows the traceback)."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT)."""


stderr_console = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)
stdout_console = Console(highlight=False, markup=False, emoji=False, soft_wrap=True)


def say(line: object, max_len: int | None = None) -> None:
    """One line on stderr, file-derived text made safe (never interpreted as markup)."""
    stderr_console.print(Text(safe_text(line, max_len)))


def debug_enabled() -> bool:
    """``provenance --debug ...``: tracebacks instead of one-line messages."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))
