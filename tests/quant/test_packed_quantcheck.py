"""quantcheck on packed layouts written by their real writers: the round-to-nearest ones
(bitsandbytes NF4/FP4/LLM.int8, MLX, compressed-tensors int8/fp8) are exact quantizations
of their source, grid by grid; a slightly perturbed source is "perturbed" with about its
amplitude; an unrelated one "unrelated"; GPTQ is reported with its error, not grid-checked."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from provenance.quant import quantcheck
from tests.support.packed_writers import packed_source, packed_unrelated, written

__all__ = ["packed_source", "packed_unrelated"]  # fixtures

RTN = ["bnb-nf4", "bnb-fp4", "bnb-int8", "mlx", "mlx-f16", "ct-int", "ct-fp8"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", RTN)
def test_rtn_layouts_are_exact_quantizations_of_their_source(kind: str, packed_source: Path, packed_unrelated: Path,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    candidate = written(kind, packed_source, tmp_path_factory)
    result = quantcheck(candidate, packed_source)
    checked = [t for t in result.tensors if t.checked]
    assert len(checked) >= 14 and result.verdict == "exact", [(t.name, t.status, t.grid) for t in checked]
    for t in checked:
        assert t.grid is not None and t.grid.n_unexplained == 0 and t.grid.n_blocks_scale_mismatch == 0
        assert t.grid.n_checked == t.grid.n_weights
        # the stored values are the writer's rounding of the source, up to the few codes at a cell
        # edge that its own float arithmetic (bitsandbytes int8 rounds an f16 copy) put across
        assert t.error is not None and abs(t.error.rel_l2 / t.error.expected_rel_l2 - 1) < 1e-4
    if kind == "mlx-f16":  # mlx_lm cast the float32 source to float16 before quantizing: it says so
        assert result.source_precision == "f16"
    other = quantcheck(candidate, packed_unrelated)
    assert other.verdict == "unrelated"
    assert all(t.grid.n_unexplained > 0.5 * t.grid.n_checked for t in other.tensors if t.grid is not None)


def _perturbed(source: Path, out: Path, amplitude: float) -> Path:
    """The source with Gaussian noise of ``amplitude`` times each matrix's RMS added."""
    shutil.copytree(source, out)
    weights = out / "model.safetensors"
    tensors = load_file(str(weights))
    gen = torch.Generator().manual_seed(5)
    for name, value in tensors.items():
        if value.dim() == 2:
            tensors[name] = value + amplitude * value.pow(2).mean().sqrt() * torch.randn(value.shape, generator=gen)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bnb-nf4", "mlx", "ct-int"])
def test_a_perturbed_source_is_caught_with_its_amplitude(kind: str, packed_source: Path, tmp_path: Path,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    candidate = written(kind, packed_source, tmp_path_factory)
    result = quantcheck(candidate, _perturbed(packed_source, tmp_path / "perturbed", 1e-3))
    assert result.verdict == "perturbed", result.verdict
    checked = [t for t in result.tensors if t.checked]
    flips = sum(t.grid.n_unexplained for t in checked if t.grid is not None)
    assert flips > 0
    amplitudes = sorted(t.amplitude_rel for t in checked if t.amplitude_rel == t.amplitude_rel)
    assert 2e-4 < amplitudes[len(amplitudes) // 2] < 5e-3, amplitudes  # the median tensor sees ~1e-3


@pytest.mark.slow
def test_gptq_is_reported_with_its_error_not_grid_checked(packed_source: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    result = quantcheck(written("gptq", packed_source, tmp_path_factory), packed_source)
    gptq = [t for t in result.tensors if t.qtype.startswith("GPTQ")]
    assert len(gptq) == 14 and result.verdict == "nothing-checked"
    assert all(t.status == "unchecked-type" and t.error is not None and 0 < t.error.rel_l2 < 0.15 for t in gptq)
    from provenance.commands.quantcheck_cmd import summary_lines

    assert summary_lines(result)[-1].startswith("not grid-checked (codes not predictable from the reference for GPTQ-4b-g32)")


@pytest.mark.slow
def test_investigate_runs_the_grid_check_on_a_packed_candidate(packed_source: Path,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    from provenance.investigate import investigate

    report = investigate(written("mlx", packed_source, tmp_path_factory), [packed_source])
    (finding,) = [f for f in report.findings if f.id == "quant.verdict"]
    assert finding.verdict == "exact quantization" and finding.statistic["n_unexplained"] == 0
    assert finding.statistic["n_weights_checked"] > 0
    (section,) = [s for s in report.sections if s.kind == "quantcheck"]
    assert {row["qtype"] for row in section.tables["tensors"] if row["status"] == "exact"} == {"MLX-4b-g32"}


def test_bnb_blocks_across_rows_are_checked_on_whole_blocks() -> None:
    """A weight whose rows are not whole bitsandbytes blocks (96 columns, blocks of 64): the
    check runs on chunks of whole blocks (2 rows here), where every code is explained; a
    chunk that cuts a block gets the wrong absmax, which the scale check reports."""
    functional = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes (a real writer) is not installed")
    from provenance.codecs.packed.bnb import nf4_rows
    from provenance.formats.packed import PackedTensor
    from provenance.quant.packedcheck import check_packed_rows, rows_per_check, writer_recipe

    x = torch.randn((6, 96), generator=torch.Generator().manual_seed(3))
    packed, state = functional.quantize_4bit(x, blocksize=64, quant_type="nf4")
    packing = PackedTensor("bnb-4bit", "m", (6, 96), 4, 64, {}, {"quant_type": "nf4", "blocksize": 64})
    recipe = writer_recipe(packing)
    assert rows_per_check(packing, 3) == 2 and rows_per_check(packing, 1) == 2

    def grid(r0: int, r1: int):  # type: ignore[no-untyped-def]
        flat = packed.reshape(-1)
        return nf4_rows(flat[r0 * 48: r1 * 48], state.absmax[r0 * 96 // 64:], state.code, 64, r0 * 96 % 64, 96,
                        torch.float32)

    for r0 in range(0, 6, 2):
        counts, _ = check_packed_rows(x[r0:r0 + 2], grid(r0, r0 + 2), "f32", recipe)
        assert counts.n_unexplained == 0 and counts.n_blocks_scale_mismatch == 0 and counts.n_checked == 192
    cut, _ = check_packed_rows(x[1:2], grid(1, 2), "f32", recipe)  # starts mid-block
    assert cut.n_blocks_scale_mismatch > 0
