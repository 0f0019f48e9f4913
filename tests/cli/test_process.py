"""The executable's collector settings (provenance/commands/process.py): the ``provenance``
process freezes what its startup made when the analysis starts and collects as Python
does from then on; a process that runs commands itself (tests, notebooks) is left as it was."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORIES = ROOT.parent / "shared" / "data" / "stories260K"
COMPARE = ["compare", str(STORIES / "stories260K.transpose.bin"), str(STORIES / "stories260K.bin"), "--permutations", "99"]


def _python(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


def test_the_executable_freezes_its_startup_and_restores_the_thresholds() -> None:
    out = _python(
        "import gc\n"
        "defaults = gc.get_threshold()\n"
        "from provenance.cli import main\n"
        "try:\n"
        f"    main({COMPARE!r})\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "frozen = gc.get_freeze_count()\n"
        "import torch, numba  # the analysis's libraries were loaded before the freeze: their objects are in it\n"
        "print(frozen > 200_000, gc.get_threshold() == defaults)\n")
    assert out[-2:] == ["exit 0", "True True"]


def test_a_process_running_commands_itself_keeps_its_collector() -> None:
    out = _python(
        "import gc\n"
        "defaults = gc.get_threshold()\n"
        "from click.testing import CliRunner\n"
        "from provenance.cli import cli, run\n"
        f"print(CliRunner().invoke(cli, {COMPARE!r}).exit_code, run({COMPARE!r}))\n"
        "print(gc.get_freeze_count(), gc.get_threshold() == defaults)\n")
    assert out[-2:] == ["0 0", "0 True"]


def test_investigate_imports_its_analyses_before_the_freeze(tmp_path: Path) -> None:
    """``investigate`` imports its analyses' modules on first use; the command imports those
    this run will use before the analysis starts, so the freeze covers them (torch, numba,
    scipy, compare, quant) instead of every full collection of the analysis walking them."""
    args = ["investigate", str(STORIES / "stories260K.transpose.bin"), "--reference", str(STORIES / "stories260K.bin"),
            "-o", str(tmp_path / "report"), "--format", "json"]
    out = _python(
        "import gc, sys\n"
        "import provenance.commands.progress as progress\n"
        "from provenance.cli import main\n"
        "starts = progress.analysis_starts\n"
        "def recorded():\n"
        "    print('loaded', all(m in sys.modules for m in ('torch', 'numba', 'provenance.compare.api', 'provenance.quant.api')),\n"
        "          'provenance.watermark.trace' in sys.modules)  # no keys: no tracing modules\n"
        "    starts()\n"
        "progress.analysis_starts = recorded\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print(gc.get_freeze_count() > 200_000)\n")
    assert [line for line in out if line.startswith(("loaded", "exit", "True", "False"))] == \
        ["loaded True False", "exit 0", "True"]


def test_the_executable_fixes_glibcs_mmap_threshold_unless_the_environment_sets_it() -> None:
    """provenance/commands/heap.py: large freed arrays go back to the system (its effect on peak
    RSS is measured in docs/benchmarks.md; here, that the setting is made and when it is not)."""
    import os
    import platform

    from provenance.commands import heap

    code = ("from provenance.commands import heap, process\n"
            "calls = []\n"
            "heap_fix = process.fix_mmap_threshold\n"
            "process.fix_mmap_threshold = lambda: calls.append(heap_fix()) or calls[-1]\n"
            "process.own_process()\n"
            "print(calls)\n")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ("[True]" if glibc else "[False]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**env, "MALLOC_MMAP_THRESHOLD_": str(heap.MMAP_THRESHOLD)})
    assert done.stdout.strip() == "[False]"  # the user's own setting stands
