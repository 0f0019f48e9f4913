"""Every command runs with numpy's BLAS held to one thread (its spinning threads fought the
analyses' own threads for the cores, docs/benchmarks.md), and the caller's setting comes back."""
from __future__ import annotations

import click
import numpy  # noqa: F401  (loads the BLAS library threadpoolctl reports on)
from threadpoolctl import threadpool_info

from provenance import cli as cli_module


def _blas_threads() -> list[int]:
    return [int(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_commands_run_with_one_blas_thread() -> None:
    seen: list[int] = []

    @click.command("blas-probe")
    def probe() -> None:
        seen.extend(_blas_threads())

    before = _blas_threads()
    cli_module.cli.add_command(probe)
    try:
        assert cli_module.run(["blas-probe"]) == 0
    finally:
        cli_module.cli.commands.pop("blas-probe")
    assert seen and set(seen) == {1}
    assert _blas_threads() == before
