"""The traced client's watermark is judged as part of the copy the leaker received, not as the
leaker's change (provenance.compare.known, provenance.watermark.known_mark; docs/lineage.md,
"A known change: the traced client's watermark").

Every combination on a shipped synth model (the vendor's ``synth-s00``) with the real writers:
the mark embedded by ``embed_checkpoint``, quantized by the project's llama.cpp-exact
quantizer, the fine-tune a real trained derivative (``synth-s00-ft-medium``), each file
investigated with the vendor's key registry."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from provenance.compare import CompareResult, compare
from provenance.compare.known import judge_with_known_change, tensors_to_recheck
from provenance.formats import open_checkpoint
from provenance.investigate import Inputs, Investigation, run_investigation
from provenance.progress import ProgressUpdate
from provenance.quant.writer import quantize_model
from provenance.synth.store import synth_model_path
from provenance.watermark import DerivedKey, embed_checkpoint
from provenance.watermark.known_mark import known_mark, mark_amplitude, marked_names
from tests.conftest import ROOT
from tests.support.read_counts import count_reads

pytestmark = pytest.mark.skipif(not (ROOT / "data" / "synth" / "manifest.json").is_file(), reason="synth pool not built")

SECRET = hashlib.sha256(b"known-mark test vendor secret").digest()
CLIENTS = ("acme-corp", "globex", "initech")
LEAKER = "globex"
AMPLITUDE = 1e-2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("known-mark")
    registry = work / "vendor-keys"
    registry.mkdir()
    (registry / "secret").write_bytes(SECRET)
    (registry / "clients.txt").write_text("\n".join(CLIENTS) + "\n", "utf-8")
    key = DerivedKey(SECRET, LEAKER)
    marked = work / "vendor-for-globex"
    embed_checkpoint(synth_model_path("synth-s00"), marked, key, amplitude=AMPLITUDE)
    tuned = work / "vendor-for-globex-finetuned"
    embed_checkpoint(synth_model_path("synth-s00-ft-medium"), tuned, key, amplitude=AMPLITUDE)
    out = {"registry": registry, "mark only": marked}
    for label, source in (("mark + quantized", marked), ("mark + fine-tune + quantized", tuned),
                          ("no mark", synth_model_path("synth-s00"))):
        out[label] = work / f"{label.replace(' ', '')}-Q4_K_M.gguf"
        quantize_model(source, out[label], "Q4_K_M")
    return out


def _investigate(files: dict[str, Path], label: str) -> Investigation:
    return run_investigation(Inputs(str(files[label]), (str(synth_model_path("synth-s00")),), str(files["registry"])))


def _lineage(state: Investigation) -> CompareResult:
    return next(iter(state.lineage.values()))


def test_mark_only_is_a_copy_with_the_client_named(files: dict[str, Path]) -> None:
    state = _investigate(files, "mark only")
    summary = state.report.executive_summary
    assert summary.startswith("vendor-for-globex is a copy of synth-s00, watermarked for client globex"), summary
    verdict = _lineage(state).verdict
    assert verdict.is_copy and verdict.known_change is not None and "client globex's watermark" in verdict.known_change


def test_marked_and_quantized_is_a_quantized_copy_with_the_client_named(files: dict[str, Path]) -> None:
    state = _investigate(files, "mark + quantized")
    summary = state.report.executive_summary
    assert " is a quantized copy of synth-s00, watermarked for client globex" in summary, summary
    verdict = _lineage(state).verdict
    assert verdict.kind == "requantized" and verdict.known_change is not None, verdict.description
    assert state.traced is not None and state.traced.accused == (LEAKER,)


def test_marked_fine_tuned_and_quantized_stays_a_fine_tune(files: dict[str, Path]) -> None:
    state = _investigate(files, "mark + fine-tune + quantized")
    summary = state.report.executive_summary
    assert " is a fine-tuned and quantized copy (relative delta" in summary and "watermarked for client globex" in summary
    verdict = _lineage(state).verdict
    # judged with the mark added to the reference, and still retrained
    assert verdict.kind == "fine-tune" and verdict.known_change is not None, verdict.description


def test_unmarked_quantization_is_exact_and_nobody_is_judged_with_a_mark(files: dict[str, Path]) -> None:
    state = _investigate(files, "no mark")
    summary = state.report.executive_summary
    assert " is an exact quantization of synth-s00" in summary and "nobody accused" in summary, summary
    assert _lineage(state).verdict.known_change is None


def test_the_fitted_amplitude_is_the_embedded_one(files: dict[str, Path]) -> None:
    key = DerivedKey(SECRET, LEAKER)
    with open_checkpoint(files["mark only"]) as cand, open_checkpoint(synth_model_path("synth-s00")) as ref:
        fitted = mark_amplitude(cand, ref, key, marked_names(ref, key))
    assert fitted == pytest.approx(AMPLITUDE, rel=0.01)


def test_an_innocent_clients_mark_explains_nothing(files: dict[str, Path]) -> None:
    """A sceptic's control: the same rule with a client whose key is not in the copy."""
    vendor = synth_model_path("synth-s00")
    result = compare(files["mark + fine-tune + quantized"], vendor)
    with open_checkpoint(files["mark + fine-tune + quantized"]) as cand, open_checkpoint(vendor) as ref:
        innocent = DerivedKey(SECRET, "initech")
        fitted = mark_amplitude(cand, ref, innocent, marked_names(ref, innocent))
        assert fitted is None or fitted < AMPLITUDE / 20
        change = known_mark(cand, ref, innocent, result)
        judged = result if change is None else judge_with_known_change(cand, ref, result, change)
    assert judged.verdict.kind == result.verdict.kind == "fine-tune"


def test_the_second_pass_over_the_marked_matrices_reports_progress(files: dict[str, Path]) -> None:
    """Judging again on its own reads every changed matrix once more (minutes at 7B): each one is
    reported; investigate, which judges the mark in the lineage pass, shows no second task."""
    vendor = synth_model_path("synth-s00")
    result = compare(files["mark + quantized"], vendor)
    with open_checkpoint(files["mark + quantized"]) as cand, open_checkpoint(vendor) as ref:
        change = known_mark(cand, ref, DerivedKey(SECRET, LEAKER), result)
        assert change is not None
        expected = tensors_to_recheck(cand, result, change)
        seen: list[tuple[str, int]] = []
        judge_with_known_change(cand, ref, result, change, progress=lambda name, n: seen.append((name, n)))
        assert expected and [name for name, _ in seen] == expected
        assert all(n == cand.info(name).n_bytes for name, n in seen)
    # investigate judges the mark inside the lineage pass: no second task, the pass's bytes cover it
    updates: list[ProgressUpdate] = []
    run_investigation(Inputs(str(files["mark + quantized"]), (str(vendor),), str(files["registry"])), updates.append)
    assert not [u for u in updates if "globex's mark" in u.task]
    lineage = [u for u in updates if u.task.startswith("lineage vs")]
    assert lineage and lineage[-1].total is not None and lineage[-1].done == lineage[-1].total > 0


def test_the_mark_added_in_row_chunks_is_the_mark_of_those_rows(files: dict[str, Path]) -> None:
    """The streamed check hands the change a chunk of rows at a time (and a permuted frame any
    rows): the client's key stream is by row number, so each chunk must get its own rows' mark,
    as the whole tensor would. Checked with 7-row chunks against one whole-tensor chunk."""
    from provenance.compare.gridframe import check_in_candidate_frame

    vendor = synth_model_path("synth-s00")
    result = compare(files["mark + quantized"], vendor)
    with open_checkpoint(files["mark + quantized"]) as cand, open_checkpoint(vendor) as ref:
        change = known_mark(cand, ref, DerivedKey(SECRET, LEAKER), result)
        assert change is not None
        names = [n for n in tensors_to_recheck(cand, result, change) if cand.info(n).n_rows > 14]
        assert names
        for name in names:
            whole = check_in_candidate_frame(cand, ref, name, None, change.sources[name],
                                             chunk_rows=cand.info(name).n_rows)
            chunked = check_in_candidate_frame(cand, ref, name, None, change.sources[name], chunk_rows=7)
            assert (chunked.checked, chunked.outside) == (whole.checked, whole.outside), name
            assert whole.outside <= whole.checked // 1000, name  # the marked reference explains the codes
        rows = np.array([5, 0, 9])  # any rows, in any order: each its own row's mark
        source = change.sources[names[0]]
        full = ref.read_rows(names[0]).astype(np.float32)
        marked = source(full, np.arange(full.shape[0]))
        assert np.array_equal(source(full[rows], rows), marked[rows])


@pytest.mark.parametrize("label", ["mark only", "mark + quantized"])
def test_the_mark_is_judged_in_the_lineage_pass_nothing_read_twice(
        files: dict[str, Path], label: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """investigate traces first, fits the named client's mark, and the lineage pass checks the
    changed reference against the candidate's cells from the chunks it reads: the re-judgement
    reads nothing (it read every marked matrix of both files again: 1.6x each file at 7B), and
    the lineage step reads what the comparison alone reads plus the trace's share (it stops
    early on a strong mark) and the mark fit's probe rows. The verdict and every re-judged row
    equal the two-pass judgement's. (On these tiny models the fixed reads, alignment probes
    and trace, are most of a file; at 7B each file is read 1.02x: docs/benchmarks.md.)"""
    import os

    from provenance.investigate import registry
    from provenance.investigate.state import MarkInPass
    from provenance.watermark import load_registry, trace
    from provenance.watermark.known_mark import PROBE_ROWS
    from provenance.watermark.plan import tensor_blocks

    vendor = synth_model_path("synth-s00")
    key = DerivedKey(SECRET, LEAKER)
    counts = count_reads(monkeypatch)
    result = compare(files[label], vendor, hashes=True)
    alone = dict(counts)
    counts.clear()
    trace(files[label], load_registry(files["registry"]), reference=vendor)
    traced = dict(counts)
    with open_checkpoint(files[label]) as cand, open_checkpoint(vendor) as ref:
        change = known_mark(cand, ref, key, result)
        assert change is not None
        two_pass = judge_with_known_change(cand, ref, result, change)
        rechecked = tensors_to_recheck(cand, result, change)
        probe: dict[str, int] = {}
        ahead: dict[str, int] = {}
        scored = {n for client in CLIENTS for n in marked_names(ref, DerivedKey(SECRET, client))}
        for ckpt in (cand, ref):
            for name in marked_names(ref, key):
                info = ckpt.info(name)
                path = os.path.realpath(info.file)
                # the fit reads the probe rows of both sides, the candidate's twice where it is a 16-bit float
                probe[path] = probe.get(path, 0) + 2 * min(info.n_bytes, PROBE_ROWS * info.row_bytes)
            for name in scored:
                # the trace's reader fetches the next block while one is scored: when the pass stops,
                # that block may or may not have been read yet (a thread's timing), in either run
                info, rows = ckpt.info(name), tensor_blocks(cand.info(name))[0]
                path = os.path.realpath(info.file)
                ahead[path] = max(ahead.get(path, 0), (rows.stop - rows.start) * info.row_bytes)
    per_step: dict[str, dict[str, int]] = {}

    def counted_step(analysis):  # type: ignore[no-untyped-def]
        def run(state: Investigation) -> None:
            before = dict(counts)
            analysis(state)
            per_step[analysis.__name__] = {p: n - before.get(p, 0) for p, n in counts.items() if n != before.get(p, 0)}
        run.__name__ = analysis.__name__
        return run

    monkeypatch.setattr(registry, "ANALYSES", [counted_step(a) for a in registry.ANALYSES])
    counts.clear()
    state = run_investigation(Inputs(str(files[label]), (str(vendor),), str(files["registry"])))

    assert per_step["known_mark_analysis"] == {}  # judged in the lineage pass: nothing read again
    assert isinstance(state.mark_in_pass, MarkInPass) and set(rechecked) <= set(state.mark_in_pass.checks)
    lineage = per_step["lineage_analysis"]
    assert set(lineage) == set(alone)
    for path, n in lineage.items():
        assert alone[path] <= n <= alone[path] + traced.get(path, 0) + ahead.get(path, 0) + probe[path], (path, n, alone[path])
    judged = _lineage(state)
    assert judged.verdict == two_pass.verdict
    assert judged.tensors == two_pass.tensors


def test_the_quantized_re_judgement_streams_row_chunks(files: dict[str, Path]) -> None:
    """A quantized candidate's check against the changed reference, read on its own in row chunks
    (what the re-judgement does when the pass could not check a tensor), equals the check the
    lineage pass made from its own chunks (:class:`ChangedCells`), counts and shape."""
    from provenance.compare import CompareOptions
    from provenance.compare.api import _sample_rows
    from provenance.compare.known import ChangedCells, _quantized_check
    from provenance.watermark.known_mark import fit_before_comparing, mark_change

    vendor = synth_model_path("synth-s00")
    key = DerivedKey(SECRET, LEAKER)
    with open_checkpoint(files["mark + quantized"]) as cand, open_checkpoint(vendor) as ref:
        fitted = fit_before_comparing(cand, ref, key)
        assert fitted is not None
        change = mark_change(ref, key, fitted.amplitude, fitted.fitted_on)
        cells = ChangedCells(cand, ref, change, CompareOptions())
        compare(files["mark + quantized"], vendor, taps=cells)
        checks = cells.checks()
        quantized = [n for n in checks if cand.info(n).block_size > 1]
        assert quantized
        for name in quantized:
            alone = _quantized_check(cand, ref, name, change.sources[name], _sample_rows(ref.info(name), CompareOptions()))
            assert alone == checks[name], name
