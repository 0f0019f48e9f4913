"""Options of the analyses, declared once: default, help text and command-line form together.

Every analysis takes a frozen options dataclass (``CompareOptions``, ``QuantCheckOptions``,
``ScoreOptions``...). A field that a user may set from the command line is declared with
:func:`option`, which keeps its default and its help text in the dataclass itself;
:mod:`provenance.commands.options` turns those fields into click options, so a default or a
help text is never written twice and a name means the same thing in every command.

Fields declared with plain ``dataclasses.field`` (or a bare default) are Python-API only.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

CLI_KEY = "provenance.option"


@dataclass(frozen=True)
class OptionSpec:
    """How one options field appears on the command line."""

    help: str
    flag: str | None = None
    """The long option (``--max-residual``); default: the field name with ``-`` for ``_``."""
    short: str | None = None
    """A one-letter alias (``-r``), for the few options that have one."""
    range: tuple[float | None, float | None] | None = None
    """Inclusive bounds, checked by click before the analysis runs."""
    convert: Callable[[str], Any] | None = None
    """Parse the command-line string into the field's value (e.g. a tensor-name list)."""
    metavar: str | None = None


def option(default: Any, help: str, *, flag: str | None = None, short: str | None = None,
           range: tuple[float | None, float | None] | None = None,
           convert: Callable[[str], Any] | None = None, metavar: str | None = None) -> Any:
    """A dataclass field with its default and its command-line form (see the module doc).

    A boolean that defaults to True is offered as ``--<name>/--no-<name>``; ``help`` says
    what it does when on."""
    spec = OptionSpec(help, flag, short, range, convert, metavar)
    return dataclasses.field(default=default, metadata={CLI_KEY: spec})


def spec_of(field: dataclasses.Field[Any]) -> OptionSpec | None:
    """The command-line form of ``field``, or None for an API-only field."""
    return field.metadata.get(CLI_KEY)


# ----- options shared by several analyses: one meaning, one help text ---------------------------

THREADS_HELP = ("CPU threads the command may keep busy (compare: tensors streamed at once, one torch thread "
                "each; quantcheck and quantize: the compiled kernels' share of the blocks).")
SEED_HELP = "Seed of every random draw (permutations, samples, decoy keys): results are reproducible."
PRECISION_HELP = ("Precision the quantizer saw (f32, f16, bf16); auto picks the one the stored grid explains "
                  "best.")
Precision = Literal["auto", "f32", "f16", "bf16"]
"""What the quantizer saw; ``auto`` decides from the stored grid."""


def threads_option(default: int) -> Any:
    """``--threads``: the same meaning in every command (a CPU budget); defaults differ with the
    analysis' measured best on a shared 2-core machine (docs/cli.md)."""
    return option(default, THREADS_HELP, range=(1, 64))


def seed_option(default: int = 0) -> Any:
    """``--seed``, whatever the field is called in the analysis (``seed``, ``decoy_seed``)."""
    return option(default, SEED_HELP, flag="--seed")


def precision_option(default: str = "auto") -> Any:
    return option(default, PRECISION_HELP)
