"""Options of ``quantcheck``, declared once (:mod:`provenance.options`); ``provenance quantcheck``
generates its command-line options from them. Light on purpose: the CLI imports it to build its
options without loading torch."""
from __future__ import annotations

from dataclasses import dataclass

from provenance.options import Precision, precision_option, threads_option


@dataclass(frozen=True)
class QuantCheckOptions:
    precision: Precision = precision_option()
    threads: int = threads_option(1)
    """torch threads: 1 is robust on a shared machine (docs/cli.md)."""
