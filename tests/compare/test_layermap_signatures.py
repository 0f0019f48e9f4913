"""The layer map's signatures: circuits arranged for their spectra (KV-group sums, syrk) are the
test's circuits up to float32 rounding, and the worker-thread count changes nothing
(docs/lineage.md, "Structure evidence"). On a trained synth fine-tune (norm gains away from 1,
so folding them after the product is exercised) and on the tiny Llama written by transformers,
both with 8 heads on 4 KV heads (so the group sums are exercised)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from provenance.compare.api import _own_heads, _sketch_spec
from provenance.compare.invariants import circuits
from provenance.compare.layermap import read_signatures, read_sketches
from provenance.compare.options import CompareOptions
from provenance.compare.unitspace import unit_circuits
from provenance.formats import open_checkpoint
from tests.support.synth_models import synth_model

MODELS = {"synth-s00-ft-medium": lambda _: Path(synth_model("synth-s00-ft-medium")), "hf-llama": lambda llama: llama}


def _spec_and_heads(ckpt):  # type: ignore[no-untyped-def]
    heads = _own_heads(ckpt.architecture)
    assert heads is not None and heads.n_head_kv < heads.n_head
    return replace(_sketch_spec(ckpt, CompareOptions()), probe_tokens=None), heads


@pytest.mark.parametrize("model", sorted(MODELS))
def test_spectra_circuits_are_the_tests_circuits_up_to_float32_rounding(hf_llama: Path, model: str) -> None:
    with open_checkpoint(MODELS[model](hf_llama)) as ckpt:
        spec, heads = _spec_and_heads(ckpt)
        layers = 0
        for layer, sketch in read_sketches(ckpt, spec):
            test = {c.label: c.matrix for c in circuits(sketch, heads) + unit_circuits(sketch.units)}
            fast = {c.label: c.matrix for c in circuits(sketch, heads, for_spectra=True)
                    + unit_circuits(sketch.units, for_spectra=True)}
            assert set(fast) == set(test) == {"qk", "ov", "mlp", "gate", "unit_gg", "unit_ud", "unit_gd"}
            for label, matrix in test.items():
                scale = float(np.abs(matrix).max())
                assert scale > 0
                np.testing.assert_allclose(fast[label], matrix, rtol=0, atol=2e-6 * scale, err_msg=f"{layer} {label}")
            for label in ("gate", "unit_gg", "unit_ud"):  # syrk, gains folded symmetrically: exactly symmetric
                assert np.array_equal(fast[label], fast[label].T)
            layers += 1
        assert layers == ckpt.architecture.n_layer


def test_signatures_do_not_depend_on_the_thread_count(hf_llama: Path) -> None:
    with open_checkpoint(hf_llama) as ckpt:
        spec, heads = _spec_and_heads(ckpt)
        one = read_signatures(ckpt, spec, heads, threads=1)
        two = read_signatures(ckpt, spec, heads, threads=2)
    assert [s.layer for s in one] == [s.layer for s in two] == sorted(s.layer for s in one)
    for a, b in zip(one, two, strict=True):
        assert a.spectra.keys() == b.spectra.keys() and len(a.spectra) == 7
        assert all(np.array_equal(a.spectra[k], b.spectra[k]) for k in a.spectra)
