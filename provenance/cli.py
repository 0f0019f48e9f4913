"""The ``provenance`` command line: a thin shell over the Python API.

Results go to stdout (or ``--output``), summaries and errors to stderr. Exit codes
are shared by all commands: 0 ok, 1 findings, 2 error, 64 usage error.
"""
from __future__ import annotations

import os
import sys

# Before torch is imported anywhere: with 2 busy cores, spinning OpenMP threads made
# torch 16-75x slower (DESIGN.md); passive waiting costs nothing when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click

from provenance.commands import (
    check_cmd,
    compare_cmd,
    demo_cmd,
    identify_cmd,
    inspect_cmd,
    investigate_cmd,
    quantcheck_cmd,
    refdb_cmd,
    watermark_cmd,
)
from provenance.commands.common import EXIT_ERROR, EXIT_USAGE, stderr_console
from provenance.errors import ProvenanceError
from provenance.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provenance")
def cli() -> None:
    """Model provenance and watermark forensics for LLM weights (GGUF, safetensors)."""


COMMANDS = [
    inspect_cmd.command,
    check_cmd.command,
    investigate_cmd.command,
    watermark_cmd.command,
    identify_cmd.command,
    refdb_cmd.command,
    compare_cmd.command,
    quantcheck_cmd.command,
    demo_cmd.command,
]
for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="provenance", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_ERROR)
    except ProvenanceError as exc:
        stderr_console.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_ERROR)
    sys.exit(0)


if __name__ == "__main__":
    main()
