"""Run the real CLI entry point in-process (a subprocess per call costs seconds of imports)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from provenance.cli import main


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out = capsys.readouterr()
    return Run(int(exit_info.value.code or 0), out.out, out.err)
