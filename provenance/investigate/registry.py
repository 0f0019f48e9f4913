"""The analyses ``investigate`` runs, in order (inspect runs first, always)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from provenance.investigate.identify_analysis import identify_analysis
from provenance.investigate.known_mark_analysis import known_mark_analysis
from provenance.investigate.lineage_analysis import lineage_analysis
from provenance.investigate.merge_analysis import merge_analysis
from provenance.investigate.quant_analysis import quant_analysis
from provenance.investigate.watermark_analysis import watermark_analysis

if TYPE_CHECKING:
    from provenance.investigate import Analysis

ANALYSES: list[Analysis] = [identify_analysis, lineage_analysis, merge_analysis, quant_analysis, watermark_analysis,
                             known_mark_analysis]
