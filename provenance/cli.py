"""The ``provenance`` command line: a thin shell over the Python API.

Results go to stdout (or ``--output``), summaries and errors to stderr. Commands return an
:class:`~provenance.commands.common.ExitCode` or raise; :func:`main` is the one place that
turns either into the process's exit status, for every command alike:

* 0 ok, 1 findings (what the command returned);
* 2 an input could not be used: any :class:`~provenance.errors.ProvenanceError` (a malformed
  checkpoint, a bad key registry...) or an operating-system error on a file, reported as one
  line ``error: <file> (field F, offset N): message``;
* 64 usage: bad options, an invalid policy file, an unknown output format;
* 70 a bug (any other exception): one line saying so and how to see the traceback
  (``provenance --debug ...``);
* 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

# Before torch is imported anywhere: with 2 busy cores, spinning OpenMP threads made
# torch 16-75x slower (DESIGN.md); passive waiting costs nothing when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click
from threadpoolctl import threadpool_limits

from provenance.commands.common import ExitCode, say
from provenance.commands.process import own_process
from provenance.errors import ProvenanceError, UsageProblem
from provenance.textsafe import safe_text
from provenance.version import __version__

DEBUG_HELP = "Show the full traceback of any error (for bug reports); also PROVENANCE_DEBUG=1."


COMMAND_MODULES = {
    "inspect": "provenance.commands.inspect_cmd",
    "check": "provenance.commands.check_cmd",
    "scan": "provenance.commands.scan_cmd",
    "investigate": "provenance.commands.investigate_cmd",
    "watermark": "provenance.commands.watermark_cmd",
    "identify": "provenance.commands.identify_cmd",
    "refdb": "provenance.commands.refdb_cmd",
    "compare": "provenance.commands.compare_cmd",
    "quantcheck": "provenance.commands.quantcheck_cmd",
    "quantize": "provenance.commands.quantize_cmd",
    "demo": "provenance.commands.demo_cmd",
}
"""Each command's name and the module whose ``command`` it is (checked by tests/cli/test_cli.py)."""


class LazyGroup(click.Group):
    """Imports a command's module only when that command is looked up (run, or listed by
    ``--help``): ``provenance identify`` does not pay for the scanners, policy engine and
    progress bars of the other commands (~0.1 s of a < 1 s budget, docs/benchmarks.md)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            self.add_command(importlib.import_module(COMMAND_MODULES[cmd_name]).command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provenance")
@click.option("--debug", is_flag=True, help=DEBUG_HELP)
def cli(debug: bool) -> None:
    """Model provenance and watermark forensics for LLM weights (GGUF, safetensors)."""


@cli.result_callback()
def _exit_with(code: int | None, **_: object) -> None:
    """Commands return their exit code; exiting with it here makes it the status under any
    click runner (``main``, or a test's ``CliRunner``)."""
    click.get_current_context().exit(int(code or 0))


def _debug_requested(args: list[str]) -> bool:
    """``--debug`` among the global options (before the command name), or PROVENANCE_DEBUG."""
    if os.environ.get("PROVENANCE_DEBUG", "") not in ("", "0"):
        return True
    for arg in args:
        if not arg.startswith("-"):
            return False
        if arg == "--debug":
            return True
    return False


def _os_error_line(exc: OSError) -> str:
    where = safe_text(exc.filename) + ": " if exc.filename is not None else ""
    return f"error: {where}{safe_text(exc.strerror or exc)}"


def run(args: list[str]) -> int:
    """Run the command line ``args``; the exit status (see the module doc)."""
    debug = _debug_requested(args)
    try:
        # numpy's OpenBLAS threads spin between calls (OMP_WAIT_POLICY does not reach them)
        # and the analyses parallelise by themselves (--threads): BLAS threads on top only
        # fought over the cores. One investigate of a 135M model took 77 s of CPU with them,
        # 27 s without, on the shared 2-core machine (docs/benchmarks.md). The limit reaches
        # only libraries loaded when it is set: numpy is imported here, not left to the
        # command (compare of a 270M GGUF took 1 s more CPU when numpy came later).
        import numpy  # noqa: F401

        with threadpool_limits(1, user_api="blas"):
            rv = cli.main(args=args, prog_name="provenance", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        say("interrupted")
        return ExitCode.INTERRUPTED
    except click.UsageError as exc:
        exc.show()
        return ExitCode.USAGE
    except click.ClickException as exc:  # e.g. a file click could not open: the input
        exc.show()
        return ExitCode.INPUT_ERROR
    except ProvenanceError as exc:
        if debug:
            traceback.print_exc()
        say(f"error: {exc.one_line()}")
        return ExitCode.USAGE if isinstance(exc, UsageProblem) else ExitCode.INPUT_ERROR
    except OSError as exc:  # a file that cannot be read or written: the input, not a bug
        if debug:
            traceback.print_exc()
        say(_os_error_line(exc))
        return ExitCode.INPUT_ERROR
    except Exception as exc:
        if debug:
            traceback.print_exc()
        say(f"error: internal error (a bug in provenance {__version__}): {type(exc).__name__}: {safe_text(exc, 300)}"
            + ("" if debug else "; rerun as `provenance --debug ...` for the traceback and please report it"))
        return ExitCode.SOFTWARE
    return int(rv) if rv is not None else ExitCode.OK


def main(argv: list[str] | None = None) -> None:
    own_process()  # the executable's own process: its collector settings (commands/process.py)
    code = run(list(sys.argv[1:] if argv is None else argv))
    if code == ExitCode.INTERRUPTED:
        # Everything the command was writing is already cleaned up (atomic outputs remove
        # their temp files on the way out); what is left is interpreter teardown, which with
        # torch and numba loaded took 2-3 s on the shared machine: skip it, so Ctrl-C stops
        # within a second.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
