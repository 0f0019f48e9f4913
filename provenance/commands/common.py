"""Conventions shared by every command: consoles and exit codes (output files: :mod:`provenance.fileio`)."""
from __future__ import annotations

from rich.console import Console

# Exit codes shared by every command (CI gates depend on them).
EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2
EXIT_USAGE = 64  # BSD EX_USAGE: kept apart from 1 and 2 so a CI gate never confuses them

stderr_console = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)
stdout_console = Console(highlight=False, markup=False, emoji=False, soft_wrap=True)
