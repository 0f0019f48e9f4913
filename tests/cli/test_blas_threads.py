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


def test_a_fresh_process_limits_the_blas_that_its_command_loads() -> None:
    """In a fresh process nothing has loaded numpy when the CLI starts (the package's exports
    are lazy): the CLI loads it before setting the limit, which reaches only libraries
    loaded by then (without this, compare of a 270M GGUF took 1 s more CPU)."""
    import subprocess
    import sys

    code = (
        "import sys, click\n"
        "from provenance import cli as cli_module\n"
        "assert 'numpy' not in sys.modules\n"
        "@click.command('blas-probe')\n"
        "def probe():\n"
        "    import numpy  # as a command does, after the CLI set its limit\n"
        "    from threadpoolctl import threadpool_info\n"
        "    print(sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}))\n"
        "cli_module.cli.add_command(probe)\n"
        "sys.exit(cli_module.run(['blas-probe']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[1]"
