"""Compose the executive summary: the verdict in one sentence with its p-value, then the rest.

The sentence is built from the analyses' typed results, strongest evidence first: which
reference the candidate is closest to (lineage, smallest relative change), what it is
relative to it by the stated rules of :func:`what_it_is` (lineage kind x grid check x
watermark), whose watermark it carries, and what else it derives from or is unrelated to.
Every clause keeps its own p-value.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from provenance.document import Finding, model_name
from provenance.investigate.watermark_analysis import trace_sentence
from provenance.numbers import format_p

if TYPE_CHECKING:
    from provenance.compare import CompareResult
    from provenance.compare.result import ChangeDetails, LineageVerdict, PartialCopyDetails
    from provenance.investigate.state import Investigation
    from provenance.quant.result import QuantVerdict

# Order of findings in reports: strongest, most specific evidence first.
PRIORITY = ["watermark.accusation", "lineage.layers", "lineage.merge", "lineage.verdict", "quant.verdict",
            "watermark.none", "identify.match", "format.identity"]


def finding_rank(finding: Finding) -> int:
    for index, prefix in enumerate(PRIORITY):
        if finding.id.startswith(prefix):
            return index
    return len(PRIORITY)


def _p(p: float | None) -> str:
    return format_p(p) if p is not None else "no p-value"


def _lineage_p(result: CompareResult) -> str:
    return _p(result.verdict.p_asymptotic)


#: how a verdict kind reads after "a" (kinds not listed read as themselves, dashes as spaces)
KIND_WORDS = {"restructured": "restructured copy"}


def _structural_what(v: LineageVerdict) -> str:
    """``a restructured copy (depth-upscaled)``, ``a residual-rotated copy``: from the verdict's
    typed fields."""
    words = KIND_WORDS.get(v.kind, v.kind.replace("-", " "))
    if v.kind == "rotated":
        copy = getattr(v.details, "copy", False)
        words = "residual-rotated " + ("copy" if copy else "derivative")
    kinds = [k for k in (v.structure.kinds if v.structure else ()) if k not in words]
    return f"a {words}" + (f" ({', '.join(kinds)})" if kinds else "")


def _merge_sentence(state: Investigation, name: str) -> str | None:
    """``X is a merge of A (0.50; lineage p ...) and B (0.50; ...)``, from the merge estimate's
    weights and each parent's lineage verdict."""
    merge = state.merge
    if merge is None or state.parents is None or state.parents.verdict.kind != "merge":
        return None
    parts = []
    for reference, weight in zip(merge.references, merge.weights, strict=True):
        result = state.lineage.get(reference)
        parts.append(f"{model_name(reference)} ({weight:.2f}; lineage {_lineage_p(result) if result else 'not compared'})")
    joined = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    base = f" on base {model_name(merge.base)}" if merge.base else ""
    return f"{name} is a merge of {joined}{base}."


def _partial_what(details: PartialCopyDetails) -> str:
    """``a partial copy (layers 0-2 identical, layers 3-4 unrelated)``, from the typed details."""
    from provenance.compare.layermap import layer_ranges

    return (f"a partial copy (layers {layer_ranges(details.related_layers)} {details.copied}, "
            f"layers {layer_ranges(details.unrelated_layers)} unrelated)")


def _percent(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.0f}%"


def _change(details: ChangeDetails | None) -> str:
    """``relative delta d, layers changed most a, b, c`` from a retrained verdict's details."""
    if details is None or details.overall_rel_delta is None:
        return ""
    text = f"relative delta {details.overall_rel_delta:.3g}"
    if details.layers_changed_most:
        text += ", layers changed most " + ", ".join(str(c.layer) for c in details.layers_changed_most)
    return text


#: retrained kinds: the noun alone, and as the first half of "... and quantized copy"
_RETRAINED = {"fine-tune": ("a fine-tune", "a fine-tuned"), "lora-merge": ("a LoRA merge", "a LoRA-merged"),
              "continued-pretraining": ("a continued pretraining", "a continued-pretrained")}


def _stored_quantized(verdict: LineageVerdict) -> bool:
    """A requantized verdict whose stored types include a quantized one; only F16/BF16/F32
    (a copy converted, or the same floats as a marked copy) is no quantization."""
    from provenance.codecs.types import plain_type
    from provenance.compare.result import RequantizationDetails

    if verdict.kind != "requantized":
        return False
    types = verdict.details.types if isinstance(verdict.details, RequantizationDetails) else ()
    return not types or any(plain_type(t) is None for t in types)


def what_it_is(verdict: LineageVerdict, quant: QuantVerdict | None, quant_amplitude: float | None,
               watermarked: bool) -> str:
    """What the candidate is relative to its closest reference, from the typed findings alone:
    the lineage kind (``compare``), the grid check (``quantcheck``: None when the candidate is
    not quantized) and whether a client's watermark was found. The rules (docs/reading-reports.md):

    * a copy kind whose grid check is exact: "an exact quantization" (every code explained by the reference);
    * a retrained kind (fine-tune, LoRA, continued pretraining) that was quantized: "a
      fine-tuned and quantized copy (relative delta d, layers changed most ...)"; not quantized:
      "a fine-tune (...)";
    * a magnitude-pruned copy: "a (quantized) magnitude-pruned copy (s% of weights zeroed)";
    * a perturbed copy, or a requantized one whose grid check saw a small i.i.d. perturbation:
      "a quantized copy (perturbed ...)", "a perturbed copy (...)"; when a client's watermark
      was found, the mark is that perturbation and the sentence names the client instead;
    * requantized, clean: "a quantized copy" ("a copy" when every stored type is a plain
      float: F16, BF16, F32); identical: "an identical copy".
    """
    from provenance.compare.result import ChangeDetails, CopyDetails, PartialCopyDetails

    kind, details = verdict.kind, verdict.details
    if kind in ("restructured", "rotated"):
        return _structural_what(verdict)
    if isinstance(details, PartialCopyDetails):
        return _partial_what(details)
    quantized = quant in ("exact", "perturbed", "unrelated")
    # what was undone (only moves made) and what the structure evidence names (layer map, shapes)
    words = list(verdict.transformations) + [k for k in (verdict.structure.kinds if verdict.structure else ())]
    moved = f" ({', '.join(words)})" if words else ""
    if quant == "exact" and kind in ("identical", "requantized", "perturbed-copy"):
        return f"an exact quantization{moved}"
    if kind in _RETRAINED:
        change = _change(details if isinstance(details, ChangeDetails) else None)
        noun, adjective = _RETRAINED[kind]
        what = f"{adjective} and quantized copy" if quantized else noun
        inside = ", ".join(p for p in (change, ", ".join(words)) if p)
        return f"{what} ({inside})" if inside else what
    copy = details if isinstance(details, CopyDetails) else None
    if kind == "pruned-copy":
        zeros = _percent(copy.zeroed_fraction if copy else None)
        return f"a{' quantized' if quantized else ''} magnitude-pruned copy ({zeros} of weights zeroed){moved}"
    perturbed = kind == "perturbed-copy" or quant == "perturbed"
    noise = copy.noise_rel if copy is not None and copy.noise_rel is not None else quant_amplitude
    how = "quantized copy" if quantized or _stored_quantized(verdict) else "copy"
    if perturbed and not watermarked:
        size = f": i.i.d. noise ~{noise:.1g} of the weights' spread" if noise is not None and noise == noise else ""
        return f"a {how} (perturbed{size}){moved}"
    if kind == "identical":
        return f"an identical copy{moved}"
    return f"a {how}{moved}"


def _closest_clause(state: Investigation, name: str) -> str:
    reference, closest = state.related_closest_first()[0]
    quant = state.quantchecks.get(reference)
    traced = state.traced
    best = traced.clients()[0].best if traced is not None and traced.accused and traced.clients() else None
    what = what_it_is(closest.verdict, quant.verdict if quant is not None else None,
                      quant.amplitude_rel if quant is not None else None, best is not None)
    clause = f"{name} is {what} of {model_name(reference)}"
    if traced is not None and best is not None:
        z, p = best[1].z, best[1].p_value
        clause += f", watermarked for client {', '.join(traced.accused)} (watermark z = {z:.1f}, {_p(p)};"
        clause += f" lineage {_lineage_p(closest)}"
        return clause + ")."
    clause += f" (lineage {_lineage_p(closest)})"
    if traced is not None:
        clause += f"; no client's watermark reaches z >= {traced.threshold_z:g}: nobody accused"
    return clause + "."


def executive_summary(state: Investigation) -> str:
    report = state.report
    name = os.path.basename(state.inputs.candidate)
    related = state.related_closest_first()
    unrelated = [(ref, r) for ref, r in state.lineage.items() if r.verdict.kind == "unrelated"]
    traced = state.traced
    sentences: list[str] = []
    slices = state.layer_slices
    if slices is not None and state.parents is not None and state.parents.verdict.kind == "frankenmerge":
        # the layer map's own description (from its typed segments), each source's lineage p
        ps = ", ".join(f"{model_name(ref)} {_lineage_p(r)}" for ref, r in state.lineage.items()
                       if model_name(ref) in {m.source for m in slices.matches})
        sentences.append(f"{name} is a {slices.description} (lineage {ps}).")
        related = []
    elif (merged := _merge_sentence(state, name)) is not None:
        sentences.append(merged)
        related = []  # the merge sentence names every parent with its p-value
    if related:
        sentences.append(_closest_clause(state, name))
        for reference, other in related[1:]:
            q = state.quantchecks.get(reference)
            what = what_it_is(other.verdict, q.verdict if q is not None else None, q.amplitude_rel if q is not None else None, False)
            sentences.append(f"It also derives from {model_name(reference)} ({what.split(' ', 1)[1]}, {_lineage_p(other)}).")
    elif traced is not None and traced.accused:
        clients = traced.clients()
        best = clients[0].best if clients else None
        sentences.append(trace_sentence(traced, state.inputs.candidate).rstrip(".")
                         + f" ({_p(best[1].p_value if best else None)}).")
    if unrelated:
        refs = ", ".join(f"{model_name(ref)} ({_lineage_p(r)})" for ref, r in unrelated)
        sentences.append(f"{'It' if sentences else name} is unrelated to {refs}.")
    if not sentences:
        for finding in sorted(report.findings, key=finding_rank):
            if finding.id == "format.identity" and len(report.findings) > 1:
                continue
            p = f" ({_p(finding.p_value)})" if finding.p_value is not None else ""
            sentences.append(f"{finding.summary.rstrip('.')}{p}.")
            if len(sentences) == 2:
                break
    if not sentences:
        return f"{name}: no findings."
    text = " ".join(sentences)
    return text if text.startswith(name) else f"{name}: {text}"
