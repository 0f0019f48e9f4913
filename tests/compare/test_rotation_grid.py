"""Grid consistency after a residual rotation (issue #18): a rotated, quantized copy is a copy.

Candidates: the real fine-tuned stories260k-ft-medium (and the synth derivatives) with the
residual stream rotated (`provenance.synth.obfuscate.rotate_residual`: gains folded, readers
``W Q``, writers ``Q^T W``), stored by the project's llama.cpp-exact writer or by llama.cpp's
own quantizer. The rule and its measured margins are in `provenance/compare/rotgrid.py` and
docs/lineage.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from provenance.compare import CompareOptions, compare
from provenance.compare.rotgrid import FLOAT_NOISE_MAX, TENSOR_OUTSIDE_MAX, RotatedGridCheck, check_rotated_grid
from provenance.compare.rotview import RotatedView
from provenance.formats import open_checkpoint
from provenance.synth.obfuscate import Recipe
from tests.support.synth_models import synth_model as _model

OPTS = CompareOptions(permutations=199, threads=1)
ROTATE = (("rotate", 3),)


def _rotated(source: str, out: Path, final: str | None = "Q4_K_M") -> Path:
    Recipe("rotated", ROTATE, final).write(_model(source), out)
    return out


def _grid(candidate: Path, reference: str) -> RotatedGridCheck:
    with open_checkpoint(candidate) as c, open_checkpoint(_model(reference)) as r:
        found = check_rotated_grid(c, r, [n for n in c.tensors if n in r.tensors or n == "output.weight"])
    assert found is not None
    return found


def test_rotated_quantized_copy_is_a_quantized_copy(tmp_path: Path) -> None:
    cand = _rotated("stories260k-ft-medium", tmp_path / "rot-q4.gguf")
    res = compare(cand, _model("stories260k-ft-medium"), OPTS)
    v = res.verdict
    assert v.kind == "rotated" and v.related is True and v.details.copy is True, v.summary
    grid = v.details.grid
    assert grid is not None and grid.consistent and grid.quantized
    assert grid.codes_outside <= 1e-3 * grid.codes_checked and grid.worst_outside_fraction <= TENSOR_OUTSIDE_MAX
    assert grid.float_noise_ratio_max is not None and grid.float_noise_ratio_max <= FLOAT_NOISE_MAX
    assert v.description.startswith("quantized copy (") and "after a residual rotation" in v.description
    assert "codes inside their cells" in v.description
    # the unit circuits alone could not tell it from a fine-tune: quantization moved them
    assert v.details.unit_rel_delta > 0.02


def test_rotated_quantized_fine_tune_stays_a_derivative(tmp_path: Path) -> None:
    """The same file against its parent (a real fine-tune): the cells do not hold the parent."""
    cand = _rotated("stories260k-ft-medium", tmp_path / "rot-q4.gguf")
    v = compare(cand, _model("stories260k"), OPTS).verdict
    assert v.kind == "rotated" and v.related is True and v.details.copy is False, v.summary
    assert v.details.grid is not None and not v.details.grid.consistent
    assert v.description.startswith("rotated derivative of the reference")


def test_llama_cpp_quantizer_rotated_copy(tmp_path: Path) -> None:
    """llama.cpp's own quantizer (not the project's writer) on a rotated F32 GGUF."""
    from tests.support.ggml_reference import llama_cpp_quantize

    f32 = _rotated("stories260k-ft-medium", tmp_path / "rot-f32.gguf", final=None)
    cand = llama_cpp_quantize(f32, tmp_path / "rot-q8.gguf", "Q8_0")
    v = compare(cand, _model("stories260k-ft-medium"), OPTS).verdict
    assert v.kind == "rotated" and v.details.copy is True and v.details.grid.consistent, v.summary
    assert "Q8_0" in v.details.grid.types


def test_null_fine_tunes_and_unrelated_models_never_pass(tmp_path: Path) -> None:
    """Every synth derivative of stories260k (fine-tunes light/medium/heavy, LoRA, continued
    pretraining) rotated and quantized, checked against its parent, and an unrelated model
    rotated and quantized, checked against stories260k: none consistent, far from the rule."""
    manifest = json.loads((Path(_model("stories260k")).parents[1] / "manifest.json").read_text())
    derived = [m for m in manifest["models"] if m.get("parent") == "stories260k"]
    assert len(derived) == 5
    for m in derived:
        g = _grid(_rotated(m["id"], tmp_path / f"{m['id']}.gguf"), "stories260k")
        assert not g.consistent, m["id"]
        assert g.codes_outside > 0.01 * g.codes_checked and g.worst_outside_fraction > 0.2, (m["id"], g.describe())
        assert g.float_noise_ratio_max is not None and g.float_noise_ratio_max > 100 * FLOAT_NOISE_MAX
    unrelated = _grid(_rotated("synth-s03", tmp_path / "s03.gguf"), "stories260k")
    assert not unrelated.consistent and unrelated.codes_outside > 0.5 * unrelated.codes_checked


def test_float_candidate_is_not_judged_by_cells(tmp_path: Path) -> None:
    """An F32 rotated copy has no cells a refitted rotation can be held to: no check, and the
    verdict stays the unit circuits' "rotated copy"."""
    cand = _rotated("stories260k-ft-medium", tmp_path / "rot-f32.gguf", final=None)
    with open_checkpoint(cand) as c, open_checkpoint(_model("stories260k-ft-medium")) as r:
        assert check_rotated_grid(c, r, [n for n in c.tensors if n in r.tensors]) is None
    v = compare(cand, _model("stories260k-ft-medium"), OPTS).verdict
    assert v.kind == "rotated" and v.details.copy is True and v.details.grid is None
    assert v.description.startswith("rotated copy of the reference")


def test_rotated_view_undoes_the_rotation(tmp_path: Path) -> None:
    """Reading a rotated copy through :class:`RotatedView` with its ``Q`` gives the
    reference's (gain-folded) weights back, readers and writers alike, row chunks and blocks."""
    from provenance.synth.obfuscate import rotate_residual

    with open_checkpoint(_model("stories260k-ft-medium")) as r:
        tensors = {n: r.read(n) for n in r.tensors}
    d = tensors["token_embd.weight"].shape[1]
    q, rr = np.linalg.qr(np.random.default_rng(3).standard_normal((d, d)))
    q = q * np.sign(np.diag(rr))[None, :]
    cand = _rotated("stories260k-ft-medium", tmp_path / "rot-f32.gguf", final=None)
    folded = rotate_residual(tensors, seed=3)  # the same Q (seed 3), for the expected values
    with open_checkpoint(cand) as c:
        view = RotatedView(c, q)
        for name in ("token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight", "blk.2.attn_output.weight"):
            back = view.read(name)
            role = view.info(name).role
            want = q @ folded[name] if role in ("ffn_down", "attn_output") else folded[name] @ q.T
            np.testing.assert_allclose(back, want, atol=1e-5)
            assert view.info(name).dtype == "F32"
            with view.row_reader(name) as reader:
                np.testing.assert_allclose(reader.read(3, 9).numpy(), back[3:9], atol=1e-6)
            blocks = view.read_blocks(name, np.array([0, 5]), np.array([2, 7]), 4)
            np.testing.assert_allclose(blocks, np.stack([back[0, 2:6], back[5, 7:11]]), atol=1e-6)
        assert view.read("blk.1.attn_norm.weight").shape == (d,)


@pytest.mark.parametrize("source", ["stories260k", "synth-s00"])
def test_rotated_copies_of_other_models(tmp_path: Path, source: str) -> None:
    """The rule holds beyond the table's model: copies of stories260k and synth-s00, Q8_0."""
    g = _grid(_rotated(source, tmp_path / "c.gguf", "Q8_0"), source)
    assert g.consistent, g.describe()


def test_streamed_in_small_chunks_is_the_same_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row chunks of the readers and candidate blocks of the writers (each a pass over the
    reference's rows) change only the summation order: every count equal, every ratio to 1e-12."""
    from provenance.compare import rotgrid

    cand = _rotated("stories260k-ft-medium", tmp_path / "rot-q4.gguf")
    whole = _grid(cand, "stories260k-ft-medium")
    # at this shape every tensor is one chunk by default; force many (rows of 64 and 172 weights)
    monkeypatch.setattr(rotgrid, "CHUNK_ELEMS", 1000)
    monkeypatch.setattr(rotgrid, "WRITER_BLOCK_ELEMS", 3000)
    chunked = _grid(cand, "stories260k-ft-medium")
    a, b = whole.to_dict(), chunked.to_dict()
    for key, value in a.items():
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert b[key] == value, key
    assert a["consistent"] and a["codes_checked"] > 0 and a["float_tensors"] > 0


def test_polar_factor_and_its_svd_fallback_give_the_same_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Q is the orthogonal polar factor of the cross product (Newton, in place: compare/polar.py);
    the SVD's U V^T, kept for a singular cross product, gives the same check (every count equal)."""
    from provenance.compare import rotgrid
    from provenance.compare.polar import SingularMatrixError

    cand = _rotated("stories260k-ft-medium", tmp_path / "rot-q4.gguf")
    newton = _grid(cand, "stories260k-ft-medium").to_dict()

    def singular(x: np.ndarray) -> np.ndarray:
        raise SingularMatrixError("forced")

    monkeypatch.setattr(rotgrid, "orthogonal_polar_factor", singular)
    svd = _grid(cand, "stories260k-ft-medium").to_dict()
    for key, value in newton.items():
        if isinstance(value, float):
            assert svd[key] == pytest.approx(value, rel=1e-10), key
        else:
            assert svd[key] == value, key
    assert newton["consistent"] and newton["codes_checked"] > 0
