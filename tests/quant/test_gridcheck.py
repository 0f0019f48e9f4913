"""Grid consistency against the real llama.cpp files: clean quantizations are exact,
perturbed references are flagged with the right amplitude, unrelated ones are told apart."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

from provenance.cli import cli, run
from provenance.codecs.recipes import roundf
from provenance.quant import QuantCheckOptions, quantcheck
from provenance.quant.gridcheck import check_block_rows, source_variants
from tests.conftest import single_torch_thread

QUANT_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "llamacpp-quant"
SOURCE = QUANT_DIR / "tiny-llama-f32.gguf"
# What each file's quantizer was fed, as the grids reveal it: some files were made from
# the f32 source, the others from tiny-llama-f16.gguf (float64 draws cast straight to f16).
PRECISION = {
    "Q8_0": "f16", "Q4_0": "f16", "Q2_K": "f16", "Q4_K_M": "f16", "Q5_K_M": "f16", "Q6_K": "f16",
    "Q5_0": "f32", "Q3_K_M": "f32", "Q4_K_S": "f32", "IQ4_XS": "f32",
}
NOISE = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():  # type: ignore[no-untyped-def]
    with single_torch_thread():
        yield


def _rewrite(path: Path, transform) -> None:  # type: ignore[no-untyped-def]
    reader = gguf.GGUFReader(SOURCE)
    writer = gguf.GGUFWriter(str(path), "llama")
    for i, tensor in enumerate(reader.tensors):
        writer.add_tensor(tensor.name, transform(i, np.asarray(tensor.data, dtype=np.float32).copy()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def noisy_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source plus Gaussian noise of NOISE x each matrix's std."""
    path = tmp_path_factory.mktemp("quant") / "noisy.gguf"
    rng = np.random.default_rng(1)
    _rewrite(path, lambda i, a: a + (rng.standard_normal(a.shape) * NOISE * a.std()).astype(np.float32) if a.ndim > 1 else a)
    return path


@pytest.fixture(scope="module")
def unrelated_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shapes and distribution, independent draws."""
    path = tmp_path_factory.mktemp("quant") / "unrelated.gguf"
    rng = np.random.default_rng(12345)
    _rewrite(path, lambda i, a: (rng.standard_normal(a.shape) * a.std()).astype(np.float32) if a.ndim > 1 else a)
    return path


@pytest.mark.parametrize("kind", sorted(PRECISION))
def test_clean_quantization_is_exact(kind: str) -> None:
    result = quantcheck(QUANT_DIR / f"tiny-llama-{kind}.gguf", SOURCE)
    table = result.table
    assert result.verdict == "exact" and not result.flagged
    assert result.n_unexplained == 0 and result.n_weights_checked == 2_228_224
    assert result.source_precision == PRECISION[kind]
    checked = table[table["status"] == "exact"]
    assert len(checked) == 16 and (checked["n_blocks_scale_mismatch"] == 0).all()
    # The stored values are the clean quantization's, so the two errors coincide (IQ4:
    # up to the codes only determined within the super-scale's f16 rounding).
    no_flip = checked["n_mismatch"] == 0
    assert no_flip.sum() >= 1
    assert (checked.loc[no_flip, "rel_l2"] == checked.loc[no_flip, "expected_rel_l2"]).all()
    assert np.allclose(checked["rel_l2"], checked["expected_rel_l2"], rtol=1e-3)
    assert (table.loc[table["qtype"] == "F32", "status"] == "identical").all()


def test_stories260k_q8_0_exact() -> None:
    result = quantcheck(QUANT_DIR / "stories260K-Q8_0.gguf", QUANT_DIR / "stories260K-f32.gguf")
    table = result.table
    assert result.verdict == "exact" and result.n_unexplained == 0 and result.source_precision == "f32"
    assert result.verdicts == {"exact": 31}
    assert (table.loc[table["qtype"] == "F16", "status"] == "identical").all()  # f16 = rounding of f32


def test_the_nine_q8_0_mismatches_are_double_rounding() -> None:
    """Against f16(f32 source) 9 Q8_0 codes disagree: the quantizer was fed
    f16(float64), which differs from f16(f32(float64)) where the f32 value sits exactly
    on an f16 midpoint. Those 9 are explained; against the f16 file nothing is left."""
    result = quantcheck(QUANT_DIR / "tiny-llama-Q8_0.gguf", SOURCE, QuantCheckOptions(precision="f16"))
    table = result.table
    assert int(table["n_mismatch"].sum()) == 9 and int(table["n_explained"].sum()) == 9
    result = quantcheck(QUANT_DIR / "tiny-llama-Q8_0.gguf", QUANT_DIR / "tiny-llama-f16.gguf", QuantCheckOptions(precision="f32"))
    table = result.table
    assert int(table["n_mismatch"].sum()) == 0 and result.verdict == "exact"
    # And the f32 hypothesis is plainly wrong for this file.
    result = quantcheck(QUANT_DIR / "tiny-llama-Q8_0.gguf", SOURCE, QuantCheckOptions(precision="f32"))
    assert result.n_unexplained > 20_000


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q5_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K", "IQ4_XS"])
def test_perturbed_reference_is_flagged_with_amplitude(kind: str, noisy_reference: Path) -> None:
    result = quantcheck(QUANT_DIR / f"tiny-llama-{kind}.gguf", noisy_reference)
    table = result.table
    assert result.verdict == "perturbed" and result.flagged
    assert result.n_unexplained > 2000
    assert NOISE / 2 < result.amplitude_rel < NOISE * 2
    flagged = table[table["status"] == "perturbed"]
    # Flips sit next to cell boundaries, both directions equally.
    assert (flagged["dist_median_steps"] < 0.05).all()
    up, down = flagged["n_up"].sum(), flagged["n_down"].sum()
    assert abs(up - down) < 0.1 * (up + down)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_K_M"])
def test_unrelated_reference(kind: str, unrelated_reference: Path) -> None:
    result = quantcheck(QUANT_DIR / f"tiny-llama-{kind}.gguf", unrelated_reference)
    table = result.table
    assert result.verdict == "unrelated"
    assert (table.loc[table["status"] == "unrelated", "frac_unexplained"] > 0.5).all()


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1])
def test_gguf_quantize_is_predicted_exactly(qtype: T) -> None:
    """gguf-py's quantizers are bit-exact ports of llama.cpp's reference ones: on random
    data, zero scales and exact ties included, the recipe predicts every code and scale."""
    rng = np.random.default_rng(int(qtype))
    x = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    x[0, :32] = 0.0  # zero block: d = 0
    x[1, :32] = np.round(x[1, :32] * 1e3) / 1e3  # many exact .5 positions in code units
    x[2] = np.float32(0.01) * rng.integers(-3, 4, 256)
    raw = np.asarray(gguf.quants.quantize(x, qtype))
    counts, errors = check_block_rows(torch.from_numpy(x), raw, int(qtype), "f32")
    assert counts.n_mismatch == 0 and counts.n_blocks_scale_mismatch == 0
    assert errors.sse == errors.clean_sse


def test_q8_0_codes_use_the_f32_d_and_its_inverse() -> None:
    """``roundf(x * (1/d))`` with the f32 ``d``: rounding ``x / d`` instead flips about one
    code in 10^6, using the stored f16 ``d`` about one in 150. Find blocks where the
    variants disagree and check that the recipe still predicts gguf-py's (= llama.cpp's)
    codes exactly there."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((300_000, 32)) * 0.02).astype(np.float32)
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    by_inverse = roundf(torch.from_numpy(x * (np.float32(1) / d)))
    by_division = roundf(torch.from_numpy(x / d))
    by_stored = roundf(torch.from_numpy(x / d.astype(np.float16).astype(np.float32)))
    rows = torch.nonzero((by_inverse != by_division).any(dim=1)).flatten().numpy()
    assert len(rows) >= 1
    assert int((by_inverse != by_stored).sum()) > 0.004 * x.size
    sample = np.ascontiguousarray(x[rows])
    raw = np.asarray(gguf.quants.quantize(sample, T.Q8_0))
    counts, _ = check_block_rows(torch.from_numpy(sample), raw, int(T.Q8_0), "f32")
    assert counts.n_mismatch == 0


def test_roundf_and_source_variants() -> None:
    v = torch.tensor([0.5, -0.5, 1.5, 2.5, 0.49999997, -2.5000002])
    assert roundf(v).tolist() == [1.0, -1.0, 2.0, 3.0, 0.0, -3.0]
    mid = float(np.float32(1.0) + np.float32(2.0**-11))  # exactly between two f16 values
    near, alt = source_variants(torch.tensor([mid, 0.3]), "f16")
    assert near.tolist()[0] == 1.0 and alt is not None and alt.tolist()[0] == 1.0 + 2.0**-10
    assert alt.tolist()[1] == near.tolist()[1]
    assert source_variants(torch.tensor([0.3]), "f32")[1] is None


def test_cli_exit_codes_and_outputs(tmp_path: Path, noisy_reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = CliRunner()
    clean = runner.invoke(cli, ["quantcheck", str(QUANT_DIR / "tiny-llama-Q4_K_S.gguf"), "--reference", str(SOURCE),
                                "-o", str(tmp_path / "a")])
    assert clean.exit_code == 0, clean.output
    doc = json.loads((tmp_path / "a" / "quantcheck.json").read_text())
    assert doc["summary"]["verdict"] == "exact" and len(doc["tensors"]) == 21
    assert (tmp_path / "a" / "quantcheck.csv").read_text().startswith("name,")
    assert "exact quantization" in (tmp_path / "a" / "quantcheck.md").read_text()
    args = ["quantcheck", str(QUANT_DIR / "tiny-llama-Q4_K_S.gguf"), "--reference", str(noisy_reference), "-o", str(tmp_path / "b")]
    flagged = runner.invoke(cli, args)
    assert flagged.exit_code == 1 and "perturbed" in flagged.output
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 8)
    capsys.readouterr()
    assert run(["quantcheck", str(broken), "--reference", str(SOURCE)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {broken}")
