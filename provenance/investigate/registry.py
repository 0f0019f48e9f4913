"""The analyses ``investigate`` runs, in order (inspect runs first, always)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provenance.investigate import Analysis

ANALYSES: list["Analysis"] = []
