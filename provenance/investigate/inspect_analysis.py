"""The "what is this file?" part of an investigation, from ``inspect_checkpoint``."""
from __future__ import annotations

from typing import Any

from provenance.document import Figure, Finding, Section, Severity


def quant_type_figure(report: dict[str, Any]) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = report["quant_types"]
    figure, axis = plt.subplots(figsize=(6, 2.6))
    names = list(types)
    axis.barh(names, [types[n]["elements"] / 1e6 for n in names], color="#2f6fde")
    axis.set_xlabel("parameters (millions)")
    axis.set_title("Storage type of the weights")
    axis.invert_yaxis()
    return Figure.from_matplotlib("storage-types", "Parameters per storage type (quantization mix)", figure)


def inspect_section(report: dict[str, Any], *, with_figures: bool = True) -> tuple[Section, list[Finding]]:
    arch = {k: v for k, v in report["architecture"].items() if v is not None}
    tok = report["tokenizer"]
    summary = report["summary"]
    text = (f"{report['format']} file, {summary['parameters']:,} parameters in {summary['tensors']} tensors "
            f"({summary['bits_per_weight']} bits/weight); architecture {arch.get('arch', 'unknown')}"
            f" with {arch.get('n_layer', '?')} layers, hidden {arch.get('n_embd', '?')}, "
            f"{arch.get('n_head', '?')} heads ({arch.get('n_head_kv', '?')} KV), context {arch.get('context_length', '?')}"
            f"{', rope base ' + format(arch['rope_freq_base'], 'g') if 'rope_freq_base' in arch else ''}.")
    if tok["source"] != "none":
        text += f" Tokenizer {tok['model']} with {tok['vocab_size']} tokens (token-list sha256 {tok['tokens_sha256'][:16]}…)."
    section = Section(
        kind="inspect",
        title="What is this file?",
        summary=text,
        data={"format": report["format"], "architecture": report["architecture"], "tokenizer": tok,
              "summary": summary, "files": report["files"]},
        tables={
            "storage types": [{"type": k, **v} for k, v in report["quant_types"].items()],
            "tensors": [{"name": t["name"], "stored_name": t["stored_name"], "shape": "x".join(map(str, t["shape"])),
                         "dtype": t["dtype"], "n_bytes": t["n_bytes"], **({"sha256": t["sha256"]} if "sha256" in t else {})}
                        for t in report["tensors"]],
        },
        figures=[quant_type_figure(report)] if report["quant_types"] and with_figures else [],
    )
    finding = Finding(
        id="format.identity", title="File format", verdict=report["format"],
        summary=text, severity=Severity.INFO,
        evidence={"files": report["files"], "quant_types": list(report["quant_types"])},
    )
    return section, [finding]
