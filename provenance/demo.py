"""The miqu-style demo: build a leak scenario from the shipped model families, then investigate it.

The story (January 2024, ``miqu-1-70b``): a vendor continued-pretrained a public base model
with a new rope base and a longer context, gave watermarked copies to several clients, and one
copy leaked as Q4_K_M / Q5_K_M GGUFs. Here, with the tiny trained families in ``data/synth``:

* ``base``: ``synth-s00``, the public base model (the Llama 2 of the story);
* ``internal``: ``synth-s00-cpt``, the vendor's model: continued pretraining of the base
  with rope base 10k -> 100k and context 512 -> 2048 (the vendor keeps it);
* each client gets ``internal`` plus its own keyed Gaussian mark (amplitude relative to each
  row's spread); ``acme-corp``'s copy leaks, quantized by a llama.cpp-exact quantizer;
* ``unrelated``: ``synth-s07``, independently trained on the same data.

``run_demo`` writes the scenario and the investigation report of the leaked Q4_K_M file
against every reference with the vendor's key registry. It takes seconds on a laptop CPU.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from provenance.document import Report

CLIENTS = ("acme-corp", "globex", "initech", "umbrella", "hooli")
LEAKER = "acme-corp"
WATERMARK_AMPLITUDE = 1e-2
"""Relative to each row's standard deviation. Tiny models have few weights (z grows with
sqrt(N)); at 7B weights 1e-3 gives the same power (docs/watermark.md)."""
LEAK_TYPES = ("Q4_K_M", "Q5_K_M")


@dataclass(frozen=True)
class Scenario:
    base: Path
    internal: Path
    unrelated: Path
    registry: Path
    marked: Path
    leaked: dict[str, Path]


def _demo_secret() -> bytes:
    # A fixed, public demo secret so the demo is reproducible; real owners keep theirs private.
    return hashlib.sha256(b"provenance demo vendor secret").digest()


def build_scenario(work: str | os.PathLike[str]) -> Scenario:
    from provenance.quant.writer import quantize_model
    from provenance.synth.store import synth_model_path
    from provenance.watermark import DerivedKey, embed_checkpoint

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    registry = work / "vendor-keys"
    registry.mkdir(exist_ok=True)
    (registry / "secret").write_bytes(_demo_secret())
    (registry / "clients.txt").write_text("\n".join(CLIENTS) + "\n", "utf-8")
    internal = synth_model_path("synth-s00-cpt")
    marked = work / f"internal-for-{LEAKER}"
    embed_checkpoint(internal, marked, DerivedKey(_demo_secret(), LEAKER), amplitude=WATERMARK_AMPLITUDE)
    leaked = {}
    for ftype in LEAK_TYPES:
        leaked[ftype] = work / f"miqu-style-{ftype}.gguf"
        quantize_model(marked, leaked[ftype], ftype)
    return Scenario(base=synth_model_path("synth-s00"), internal=internal, unrelated=synth_model_path("synth-s07"),
                    registry=registry, marked=marked, leaked=leaked)


@dataclass(frozen=True)
class DemoRun:
    scenario: Scenario
    report: Report
    files: dict[str, Path]
    """The report's files: ``json``, ``md``, ``html``, ``csv`` and figures/tables by file name."""


def run_demo(out_dir: str | os.PathLike[str]) -> DemoRun:
    """Build the scenario under ``out_dir/scenario`` and write the report to ``out_dir/report``."""
    from provenance.investigate import investigate
    from provenance.report import write_report

    out_dir = Path(out_dir)
    scenario = build_scenario(out_dir / "scenario")
    report = investigate(scenario.leaked["Q4_K_M"], [scenario.base, scenario.internal, scenario.unrelated],
                         key_registry=scenario.registry)
    return DemoRun(scenario, report, write_report(report, out_dir / "report", ("json", "md", "html", "csv")))
