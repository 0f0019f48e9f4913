"""Watermarks: keyed embed / detect / trace, and keyless perturbation analysis.

* :mod:`.keys`      per-(secret, client, tensor) Gaussian keys (Philox + Box-Muller), key files
* :mod:`.select`    which tensors carry the mark
* :mod:`.embed`     write a marked copy (GGUF F16/F32, safetensors file or HF directory)
* :mod:`.detect`    keyed z-scores: with the reference, on the quantization grid, blind
* :mod:`.gridsign`  grid-consistency flips as a signed statistic
* :mod:`.decoys`    innocent decoy keys scored on the same candidate (null check)
* :mod:`.realign`   undo MLP permutations / rescaling before comparing
* :mod:`.trace`     registries of clients, fixed-threshold accusation, collusion
* :mod:`.analyze`   keyless: watermark-like, fine-tune-like, symmetry, or nothing
* :mod:`.stats`     p-values, Holm, Bonferroni bound, null summaries
* :mod:`.options`   the analyses' options (defaults and help texts, also of the CLI)
* :mod:`.result`    typed scores: per client and statistic, the decoy null, the accusation rule
"""
from typing import TYPE_CHECKING

from provenance.lazy import lazy_package

if TYPE_CHECKING:
    from provenance.watermark.analyze import AnalysisResult, analyze_checkpoint
    from provenance.watermark.detect import ScoreResult, score_checkpoint
    from provenance.watermark.embed import EmbedReport, embed_checkpoint
    from provenance.watermark.keys import DerivedKey, FileKey, KeySource, gaussian_stream, key_seed, read_secret
    from provenance.watermark.options import (
        DEFAULT_AMPLITUDE,
        DEFAULT_THRESHOLD_Z,
        AnalyzeOptions,
        EmbedOptions,
        ScoreOptions,
        TraceOptions,
    )
    from provenance.watermark.stats import family_bound, holm
    from provenance.watermark.trace import TraceResult, load_registry, trace

lazy_package(__name__, {
    "AnalysisResult": "provenance.watermark.analyze",
    "analyze_checkpoint": "provenance.watermark.analyze",
    "ScoreResult": "provenance.watermark.detect",
    "score_checkpoint": "provenance.watermark.detect",
    "EmbedReport": "provenance.watermark.embed",
    "embed_checkpoint": "provenance.watermark.embed",
    "DerivedKey": "provenance.watermark.keys",
    "FileKey": "provenance.watermark.keys",
    "KeySource": "provenance.watermark.keys",
    "gaussian_stream": "provenance.watermark.keys",
    "key_seed": "provenance.watermark.keys",
    "read_secret": "provenance.watermark.keys",
    "DEFAULT_AMPLITUDE": "provenance.watermark.options",
    "DEFAULT_THRESHOLD_Z": "provenance.watermark.options",
    "AnalyzeOptions": "provenance.watermark.options",
    "EmbedOptions": "provenance.watermark.options",
    "ScoreOptions": "provenance.watermark.options",
    "TraceOptions": "provenance.watermark.options",
    "family_bound": "provenance.watermark.stats",
    "holm": "provenance.watermark.stats",
    "TraceResult": "provenance.watermark.trace",
    "load_registry": "provenance.watermark.trace",
    "trace": "provenance.watermark.trace",
})
__all__ = [
    "DEFAULT_AMPLITUDE", "DEFAULT_THRESHOLD_Z", "AnalysisResult", "AnalyzeOptions", "DerivedKey",
    "EmbedOptions", "EmbedReport", "FileKey", "KeySource", "ScoreOptions", "ScoreResult", "TraceOptions",
    "TraceResult", "analyze_checkpoint", "embed_checkpoint", "family_bound", "gaussian_stream", "holm",
    "key_seed", "load_registry", "read_secret", "score_checkpoint", "trace",
]
