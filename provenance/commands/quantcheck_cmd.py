"""``provenance quantcheck``: is a quantized checkpoint a clean quantization of a reference?"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from provenance.commands.common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, stderr_console
from provenance.errors import CheckpointError
from provenance.fileio import to_json, write_atomic
from provenance.textsafe import safe_text

SCHEMA = "provenance.quantcheck/1"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary_lines(summary: dict[str, Any]) -> list[str]:
    verdicts = ", ".join(f"{v} {k}" for k, v in sorted(summary["verdicts"].items())) or "none"
    lines = [
        f"candidate: {safe_text(summary['candidate'])}",
        f"reference: {safe_text(summary['reference'])}",
        f"verdict: {summary['verdict_text']} ({summary['n_checked']} of {summary['n_tensors']} tensors grid-checked: {verdicts})",
        f"source precision seen by the quantizer: {summary['source_precision']}"
        + (
            f" (unexplained mismatches per hypothesis on a sample: {summary['precision_evidence']})"
            if summary["precision_evidence"]
            else ""
        ),
        f"unexplained code mismatches: {summary['n_unexplained']} of {summary['n_weights_checked']} weights",
    ]
    if summary["flagged"] and summary.get("amplitude_rel") is not None and math.isfinite(summary["amplitude_rel"]):
        lines.append(f"estimated source perturbation: {summary['amplitude_rel']:.2e} x weight RMS")
    if summary["unchecked"]:
        lines.append(f"not grid-checked (no code recipe for their type): {len(summary['unchecked'])} tensors")
    return lines


def markdown(summary: dict[str, Any]) -> str:
    out = ["# Quantization check", ""]
    out += [f"- {line}" for line in summary_lines(summary)]
    if summary["layers"]:
        out += ["", "| layer | rel. L2 error | clean-quantization rel. L2 | ratio |", "|---|---|---|---|"]
        for layer, e in summary["layers"].items():
            out.append(f"| {layer} | {e['rel_l2']:.4g} | {e['expected_rel_l2']:.4g} | {e['error_ratio']:.4f} |")
    return "\n".join(out) + "\n"


@click.command("quantcheck")
@click.argument("candidate", type=click.Path(dir_okay=True))
@click.option(
    "--reference",
    "-r",
    required=True,
    type=click.Path(dir_okay=True),
    help="The reference weights (GGUF, safetensors, HF directory, llama2.c).",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Write quantcheck.json, quantcheck.csv and quantcheck.md here.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "f32", "f16", "bf16"]),
    default="auto",
    show_default=True,
    help="What the quantizer is assumed to have seen; auto picks the one the grid explains best.",
)
@click.option(
    "--threads", type=int, default=1, show_default=True, help="torch threads (1 is robust on shared machines)."
)
def command(candidate: str, reference: str, out_dir: str | None, precision: str, threads: int) -> None:
    """Grid-consistency check of a quantized CANDIDATE against --reference weights.

    Recomputes every stored code with llama.cpp's own arithmetic from the reference and
    reports, per tensor: exact quantization of the reference, quantized from a perturbed
    reference (with the perturbation amplitude estimated from the flip rate), or
    unrelated; plus dequantization error against that of a clean quantization.
    Exit status: 0 exact quantization, 1 flagged, 2 error.
    """
    from provenance.quant.api import quantcheck

    try:
        summary, table = quantcheck(candidate, reference, precision=precision, threads=threads)
    except CheckpointError as exc:
        stderr_console.print(Text(f"error: {exc.one_line()}"))
        raise SystemExit(EXIT_ERROR) from None
    except Exception as exc:  # report, never a traceback, and a distinct exit code
        stderr_console.print(Text(f"error: {type(exc).__name__}: {safe_text(exc)}"))
        raise SystemExit(EXIT_ERROR) from None
    for line in summary_lines(summary):
        stderr_console.print(Text(line))
    if out_dir:
        out = Path(out_dir)
        records = _clean(table.to_dict(orient="records"))
        write_atomic(
            out / "quantcheck.json", to_json({"schema": SCHEMA, "summary": _clean(summary), "tensors": records})
        )
        write_atomic(out / "quantcheck.csv", table.to_csv(index=False))
        write_atomic(out / "quantcheck.md", markdown(summary))
    raise SystemExit(EXIT_FINDINGS if summary["flagged"] else EXIT_OK)
