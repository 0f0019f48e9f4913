"""``compare(candidate, reference)``: is the candidate derived from the reference, and how?

Data flow: open both -> pair tensors by canonical name/shape -> layout -> streamed pass
(statistics under the identity map + sketches) -> calibrated residual-permutation test on
symmetry-invariant circuits -> if related, recover permutations/scales and re-stream the
tensors they touch -> verdict beside the metadata claims.

``compare`` is a pure function of (paths, options) returning a picklable
:class:`CompareResult`; torch's thread count is set for the duration of the call and
restored.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from provenance.compare.adapter import AdapterOnBase, adapter_evidence, adapter_verdict, with_base
from provenance.compare.align import Alignment, align_layer
from provenance.compare.claims import compare_claims
from provenance.compare.engine import PairOutcome, PairTaps, stream_pair
from provenance.compare.gridframe import explain_codes
from provenance.compare.invariants import HeadLayout, circuits
from provenance.compare.layermap import (
    LayerMap,
    LayerSignature,
    describe,
    distance_table,
    kept_identity,
    match_layers,
    read_signatures,
)
from provenance.compare.options import CompareOptions, LayoutMode
from provenance.compare.pairing import (
    Pairing,
    TensorPair,
    detect_byte_transposition,
    pair_tensors,
)
from provenance.compare.result import (
    AlignmentSummary,
    CheckpointSummary,
    CompareResult,
    CompareTiming,
    LayerAlignment,
    LayoutDecision,
    LayoutDetection,
    PairingSummary,
    PermutationTestResult,
    ShapeMismatch,
    TensorComparison,
)
from provenance.compare.rotgrid import check_rotated_grid
from provenance.compare.rotview import RotatedView
from provenance.compare.sketch import (
    NORMS,
    SketchBuilder,
    SketchSpec,
    read_sketch,
    residual_subset,
    token_subset,
    unit_subset,
)
from provenance.compare.structure import (
    DerotatedTest,
    RotationEstimate,
    StructureEvidence,
    UnpairedTensor,
    VocabularyChange,
    WidthChange,
    estimate_rotation,
    pair_vocabularies,
)
from provenance.compare.symtest import PermutationTest
from provenance.compare.transform import Transform
from provenance.compare.unitspace import relative_difference, unit_circuits
from provenance.compare.verdict import alignment_words, decide, hidden_rotation, overall_rel_delta, rotated_relation
from provenance.compare.views import layer_view, vocabulary_view
from provenance.document import model_name
from provenance.errors import input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.vocabulary import checkpoint_vocabulary, stored_token_list
from provenance.hashing import CheckpointHashes, StreamedDigests
from provenance.names.arch import ArchRecord
from provenance.textsafe import safe_text
from provenance.threads import torch_threads


def _describe(path: str, ckpt: Checkpoint) -> CheckpointSummary:
    return CheckpointSummary(safe_text(path), ckpt.format, ckpt.architecture, len(ckpt.tensors))


def _heads(arch: ArchRecord, other: ArchRecord) -> HeadLayout | None:
    """The head layout both sides share (None when they differ: alignment needs one)."""
    if (arch.n_head, arch.n_head_kv, arch.head_dim) != (other.n_head, other.n_head_kv, other.head_dim):
        return None
    return _own_heads(arch)


def _own_heads(arch: ArchRecord) -> HeadLayout | None:
    """One side's head layout: its circuits sum over its own heads, so a candidate with
    fewer KV heads (GQA conversion) still has comparable qk/ov circuits."""
    if not (arch.n_head and arch.n_head_kv and arch.head_dim):
        return None
    if arch.n_head % arch.n_head_kv:
        return None
    return HeadLayout(arch.n_head, arch.n_head_kv, arch.head_dim)


def _n_embd(ckpt: Checkpoint) -> int | None:
    if ckpt.architecture.n_embd:
        return ckpt.architecture.n_embd
    info = ckpt.tensors.get("token_embd.weight")
    return info.shape[-1] if info is not None else None


def _row(out: PairOutcome) -> TensorComparison:
    p, s = out.pair, out.stats
    rank = out.rank or {}
    grid = out.grid or {}
    return TensorComparison(
        name=safe_text(p.name), layer=p.layer, role=safe_text(p.role), kind="matrix" if p.is_matrix else "vector",
        shape="x".join(map(str, p.shape)), candidate_dtype=p.candidate_dtype, reference_dtype=p.reference_dtype,
        layout=p.layout, aligned=out.transform is not None,
        pearson=s.pearson, one_minus_pearson=s.one_minus_pearson, cosine=s.cosine, one_minus_cos=s.one_minus_cos,
        rel_delta_norm=s.rel_delta_norm, max_abs_delta=s.max_abs_delta,
        norm_candidate=s.norm_candidate, norm_reference=s.norm_reference,
        rank_energy=rank.get("rank_energy"), stable_rank=rank.get("stable_rank"),
        entropy_rank=rank.get("entropy_rank"), full_rank=rank.get("full_rank"),
        grid_type=grid.get("type"), grid_lossy_side=grid.get("lossy_side"),
        grid_outside_fraction=grid.get("outside_fraction"), grid_error=grid.get("error") or None,
        grid_checked=grid.get("checked"), grid_outside=grid.get("outside"),
        grid_frame="reference" if grid.get("outside_fraction") is not None else None,
        transform=out.transform, shape_of_change=out.shape,
        grid_noise_ratio=_noise_ratio(out), grid_rounds_to_nearest=grid.get("rounds_to_nearest"),
    )


def _noise_ratio(out: PairOutcome) -> float | None:
    """Dequantization error over the grid's own rounding noise (step^2/12 per weight)."""
    noise = (out.grid or {}).get("predicted_noise_energy")
    s = out.stats
    if not noise or s.rel_delta_norm is None:
        return None
    return float((s.rel_delta_norm * s.norm_reference) ** 2 / noise)


def _layout(cand: Checkpoint, ref: Checkpoint, pairs: list[TensorPair], mode: LayoutMode) -> LayoutDecision:
    if mode == "auto":
        found = detect_byte_transposition(cand, ref, pairs)
        detection = LayoutDetection(tuple(found["tensors_checked"]), found["median_abs_pearson_plain"],
                                    found["median_abs_pearson_transposed"], bool(found["transposed_bytes"]), found["rule"])
        return LayoutDecision(mode, detection.transposed_bytes, detection=detection)
    return LayoutDecision(mode, mode == "transposed-bytes")


def _pairing(pairing: Pairing) -> PairingSummary:
    mismatches = tuple(ShapeMismatch(u.name, tuple(u.candidate_shape or ()), tuple(u.reference_shape or ()))
                       for u in pairing.unpaired if u.reason == "shape-mismatch")
    return PairingSummary(len(pairing.pairs), tuple(pairing.names("missing-in-reference")),
                          tuple(pairing.names("missing-in-candidate")), mismatches, tuple(pairing.names("not-learned")))


def _alignment(alignment: Alignment) -> AlignmentSummary:
    return AlignmentSummary(alignment.is_identity, tuple(LayerAlignment.of(record) for record in alignment.layers),
                            {name: t.summary() for name, t in alignment.transforms.items() if not t.is_identity})


def _stream_order(pairs: list[TensorPair]) -> list[TensorPair]:
    """Group by layer (globals first, then layers in order), largest tensor first within a
    group: a layer's sketches are complete, scored and dropped before the next layer's
    pile up, so memory holds about one layer's sketches whatever the depth."""
    def key(p: TensorPair) -> tuple[int, int]:
        return (-1 if p.layer is None else int(p.layer), -int(np.prod(p.shape)))
    return sorted(pairs, key=key)


def _sample_rows(info: TensorInfo, opts: CompareOptions) -> np.ndarray:
    """The rows of a matrix whose delta is kept (effective rank, shape of the change)."""
    rng = np.random.default_rng([opts.seed, info.n_rows, info.row_length])
    return np.sort(rng.choice(info.n_rows, size=min(opts.sample_rows, info.n_rows), replace=False))


_PAIRS_IN_FLIGHT_PER_THREAD = 6
"""Pairs submitted ahead of the oldest unconsumed one, per streaming thread (:func:`_run_pairs`)."""


def _run_pairs(cand: Checkpoint, ref: Checkpoint, pairs: list[TensorPair], transforms: dict[str, Transform],
               opts: CompareOptions, sketch: tuple[np.ndarray, np.ndarray] | None,
               progress: Callable[[str, int], None] | None,
               consume: Callable[[PairOutcome], None] | None = None, light: bool = False,
               file_order: bool = False, taps: PairTaps | None = None) -> list[PairOutcome]:
    """Stream ``pairs`` on ``opts.threads`` threads; ``consume`` sees each outcome in stream
    order as soon as it is done (in the calling thread), with a bounded number in flight.
    ``light``: statistics and sketches only (no rank sample, no grid check). ``file_order``:
    in the candidate's storage order (what :class:`provenance.hashing.StreamedDigests` needs
    to hash the bytes as they pass), not layer by layer. ``taps``: other analyses fed from the
    chunks read (:class:`provenance.compare.engine.ChunkTap`)."""
    stop = threading.Event()

    def one(pair: TensorPair) -> PairOutcome:
        sample = _sample_rows(ref.info(pair.name), opts) if pair.is_matrix and not light else None
        out = stream_pair(cand, ref, pair, transforms.get(pair.name), sample_rows=sample, sketch=sketch,
                          grid_check=opts.grid_check and not light, chunk_elems=opts.chunk_elems, stop=stop.is_set,
                          threads=opts.threads, tap=taps(pair) if taps is not None else None)
        if progress is not None:
            progress(pair.name, out.bytes_read)
        return out

    results: dict[str, PairOutcome] = {}

    def done(out: PairOutcome) -> None:
        if consume is not None:
            consume(out)
        results[out.pair.name] = out

    order = sorted(pairs, key=lambda p: (cand.info(p.name).file, cand.info(p.name).offset)) if file_order \
        else _stream_order(pairs)
    if opts.threads <= 1:
        for p in order:
            done(one(p))
    else:
        # outcomes are consumed in stream order, so a submitted pair waits on the oldest: with
        # only 2 per thread in flight, a large matrix at the head (a 45M-weight MLP matrix
        # behind norms and 16M attention matrices) left a thread idle until it finished. Pairs
        # queued but not started hold nothing; finished ones hold their sketch parts, which
        # their layer's group would hold anyway once consumed (about a layer's worth in flight)
        window = _PAIRS_IN_FLIGHT_PER_THREAD * opts.threads
        pool = ThreadPoolExecutor(max_workers=opts.threads)
        try:
            pending: deque[Future[PairOutcome]] = deque()
            for p in order:
                pending.append(pool.submit(one, p))
                if len(pending) >= window:
                    done(pending.popleft().result())
            while pending:
                done(pending.popleft().result())
        except BaseException:
            # Ctrl-C or a failure: the running streams stop at their next chunk, queued ones never start
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    return [results[p.name] for p in pairs]


#: the asymptotic p below which the models count as related enough to align
ALIGN_P = 1e-3
#: the running p (layers streamed so far) below which layers are aligned as they stream;
#: layers before that point are re-streamed only if the final p asks for alignment
EAGER_ALIGN_P = 1e-3


class _Lineage:
    """Per-layer sketches -> circuits -> test (and alignment), as the stream delivers them.

    Each outcome's sketch parts go to its group (a layer, or ``None`` for the embedding
    blocks); when the group's last tensor arrives, its circuits are scored under the
    identity and all permutations (:class:`PermutationTest`) and, once the running test
    already shows a relation, the layer is aligned; then its sketches are dropped. Layers
    scored before that point are listed in ``deferred`` and re-streamed for alignment only
    if the final test asks for it. Results equal a whole-model computation (layers are
    independent in both the test's per-circuit scores and the alignment).
    """

    def __init__(self, cand: Checkpoint, ref: Checkpoint, pairs: list[TensorPair], spec: SketchSpec,
                 heads: HeadLayout | None, opts: CompareOptions, test: PermutationTest | None,
                 side_heads: tuple[HeadLayout | None, HeadLayout | None] | None = None,
                 sketch_only: list[str] | None = None) -> None:
        self.cand, self.ref, self.spec, self.heads, self.opts = cand, ref, spec, heads, opts
        self.residual, self.tokens = spec.residual, spec.tokens
        self.side_heads = side_heads or (heads, heads)
        self.test = test
        self.unit_test: PermutationTest | None = None
        if test is not None and spec.units is not None and len(spec.units):
            # its own draws (a separate seed): the two tests' nulls are independent
            self.unit_test = PermutationTest(len(spec.units), opts.permutations, opts.seed + 7,
                                             opts.first_permutations)
        self.align_now = test is None  # alignment-only pass: align every layer
        self.remaining: dict[int | None, int] = {}
        self.group_pairs: dict[int | None, list[TensorPair]] = {}
        for p in pairs:
            if SketchBuilder.wants(p.role):
                self.remaining[p.layer] = self.remaining.get(p.layer, 0) + 1
                self.group_pairs.setdefault(p.layer, []).append(p)
        # tensors whose shapes differ (fewer MLP units, KV heads): each side's sketch read
        # on its own when its layer starts, so the layer's circuits still exist
        self.sketch_only: dict[int | None, list[str]] = {}
        for name in sketch_only or []:
            info = ref.info(name)
            if SketchBuilder.wants(info.role or "") and info.layer in self.remaining:
                self.sketch_only.setdefault(info.layer, []).append(name)
        self.builders: dict[int | None, tuple[SketchBuilder, SketchBuilder]] = {}
        self.any_circuits = False
        self.aligned: dict[int, tuple[dict[str, Any], dict[str, Transform]]] = {}
        self.deferred: list[int] = []
        self.signatures: dict[int, tuple[LayerSignature, LayerSignature]] = {}
        self.unit_delta: dict[int, float] = {}
        self.probe_rows: tuple[np.ndarray, np.ndarray] | None = None
        self.test_s = 0.0
        self.align_s = 0.0

    def _builders(self, layer: int | None) -> tuple[SketchBuilder, SketchBuilder]:
        pair = self.builders.get(layer)
        if pair is None:
            pair = (SketchBuilder(self.residual, self.tokens), SketchBuilder(self.residual, self.tokens))
            self.builders[layer] = pair
            for name in self.sketch_only.pop(layer, []):
                for builder, ckpt in zip(pair, (self.ref, self.cand), strict=True):
                    part = read_sketch(ckpt, name, self.spec)
                    builder.add(ckpt.info(name).role or "", layer, part.parts())
                    builder.add_units(ckpt.info(name).role or "", layer, part.unit_part())
        return pair

    def consume(self, out: PairOutcome) -> None:
        p = out.pair
        if p.layer not in self.remaining or not SketchBuilder.wants(p.role):
            return
        rb, cb = self._builders(p.layer)
        if out.sketch_reference:
            rb.add(p.role, p.layer, out.sketch_reference)
            cb.add(p.role, p.layer, out.sketch_candidate)
        rb.add_units(p.role, p.layer, out.units_reference)
        cb.add_units(p.role, p.layer, out.units_candidate)
        out.sketch_reference, out.sketch_candidate = [], []
        out.units_reference, out.units_candidate = None, None
        self.remaining[p.layer] -= 1
        if self.remaining[p.layer] == 0:
            self._finish_group(p.layer)

    def _finish_group(self, layer: int | None) -> None:
        rb, cb = self.builders.pop(layer)
        sk_r, sk_c = rb.finish(), cb.finish()
        if self.test is not None:
            t0 = time.perf_counter()
            circ_r, circ_c = circuits(sk_r, self.side_heads[0]), circuits(sk_c, self.side_heads[1])
            self.any_circuits |= bool(circ_r)
            self.test.add(circ_r, circ_c)
            self._structure_evidence(layer, sk_r, sk_c, circ_r, circ_c)
            self.test_s += time.perf_counter() - t0
        if layer is None or layer not in sk_r.layers or not self.opts.align:
            return
        if not self.align_now and self.test is not None and self.test.running_p() < EAGER_ALIGN_P:
            self.align_now = True
        if not self.align_now:
            self.deferred.append(layer)
            return
        t0 = time.perf_counter()
        names = [p for p in self.group_pairs[layer] if p.role in NORMS]
        norms_r = {p.name: self.ref.read(p.name).reshape(-1) for p in names}
        norms_c = {p.name: self.cand.read(p.name).reshape(-1) for p in names if p.layout == "same"}
        # alignment reads only the tensors paired element for element (equal shapes)
        part_r, part_c = sk_r.layers[layer], sk_c.layers.get(layer, {})
        same = {k for k in part_r if k in part_c and part_r[k].shape == part_c[k].shape}
        self.aligned[layer] = align_layer(layer, {k: v for k, v in part_r.items() if k in same},
                                          {k: v for k, v in part_c.items() if k in same}, self.heads,
                                          self.residual, norms_r, norms_c)
        self.align_s += time.perf_counter() - t0

    def _structure_evidence(self, layer: int | None, sk_r: Any, sk_c: Any, circ_r: list[Any], circ_c: list[Any]) -> None:
        """The unit-space test, layer signatures (for the layer map) and the probe rows of
        the embedding (for a rotation): from the sketches the test already holds."""
        if layer is None:
            probe_r, probe_c = sk_r.units.get(None, {}).get("token_embd"), sk_c.units.get(None, {}).get("token_embd")
            if probe_r is not None and probe_c is not None:
                self.probe_rows = (probe_r, probe_c)
            return
        unit_r, unit_c = unit_circuits(sk_r.units), unit_circuits(sk_c.units)
        if self.unit_test is not None and unit_r:
            self.unit_test.add(unit_r, unit_c)
            self.unit_delta.update(relative_difference(unit_r, unit_c))
        if self.opts.layer_map:
            self.signatures[layer] = (LayerSignature.of(layer, circ_r + unit_r), LayerSignature.of(layer, circ_c + unit_c))

    def layer_map(self, reference_layers: int) -> LayerMap | None:
        """The map read from this pass's signatures (a same-depth candidate)."""
        if not self.signatures:
            return None
        layers = sorted(self.signatures)
        table = distance_table([self.signatures[k][1] for k in layers], [self.signatures[k][0] for k in layers])
        return describe(match_layers(table, layers, layers), reference_layers, table)

    def alignment(self) -> Alignment:
        result = Alignment()
        for layer in sorted(self.aligned):
            record, transforms = self.aligned[layer]
            result.transforms.update(transforms)
            result.layers.append(record)
        return result


@input_boundary
def compare(candidate: str | os.PathLike[str], reference: str | os.PathLike[str],
            options: CompareOptions | None = None,
            progress: Callable[[str, int], None] | None = None,
            base: str | os.PathLike[str] | None = None, hashes: bool = False,
            taps: PairTaps | None = None) -> CompareResult:
    """Compare ``candidate`` against ``reference``; see the module docstring.

    ``hashes``: also the candidate's file and tensor SHA-256s (``CompareResult.candidate_hashes``),
    taken from the bytes the streamed pass reads rather than in a pass of their own; None where
    the pass does not read the stored candidate as it is (a view of part of it, an adapter
    applied to its base: hash it on its own then).

    Either side may be a PEFT adapter folder: it is applied to ``base`` (default: the adapter's
    ``base_model_name_or_path``, opened like any model name) and compared as base + adapter; an
    adapter reference also asks whether the candidate is that merge (``CompareResult.adapter``).

    ``taps``: other analyses fed from the chunks the streamed pass reads, per pair streamed as
    stored (:class:`provenance.compare.engine.ChunkTap`; e.g. a known change judged in the same
    pass, :class:`provenance.compare.known.ChangedCells`), so they read nothing themselves."""
    opts = options or CompareOptions()
    t0 = time.perf_counter()
    # Parallelism is across tensors; see DESIGN (2 intra-op threads can be 16-75x slower).
    with torch_threads(1), ExitStack() as stack:
        cand = stack.enter_context(open_checkpoint(candidate))
        ref = stack.enter_context(open_checkpoint(reference))
        sides = [with_base(ckpt, os.fspath(base) if base is not None else None, stack) for ckpt in (cand, ref)]
        return _compare_open(os.fspath(candidate), os.fspath(reference), sides[0][0], sides[1][0], opts, progress, t0,
                             adapter_bases=(sides[0][1], sides[1][1]), hashes=hashes, taps=taps)


@dataclass
class _Pass:
    """One streamed comparison of (possibly viewed) checkpoints and what it found."""

    pairing: Pairing
    layout: LayoutDecision
    outcomes: list[PairOutcome]
    test: PermutationTestResult | None
    alignment: Alignment | None
    lineage: _Lineage | None
    reason: str | None
    times: tuple[float, float, float, float]
    digests: StreamedDigests | None = None
    """The candidate's hashes, fed by the streamed pass (finished by the caller)."""


def _token_rows(ckpt: Checkpoint) -> int | None:
    info = ckpt.tensors.get("token_embd.weight")
    return info.shape[0] if info is not None and len(info.shape) == 2 else None


def _n_ff(ckpt: Checkpoint) -> int | None:
    for info in ckpt.tensors.values():
        if info.role == "ffn_gate" and len(info.shape) == 2:
            return info.shape[0]
    return ckpt.architecture.n_ff


def _sketch_spec(ref: Checkpoint, opts: CompareOptions) -> SketchSpec:
    d = _n_embd(ref) or 0
    vocab = _token_rows(ref) or 0
    n_ff = _n_ff(ref) or 0
    units = unit_subset(n_ff, opts.max_units, opts.seed + 2) if opts.max_units > 0 and n_ff else None
    probe = (token_subset(vocab, min(opts.max_probe_tokens, 2 * d), opts.seed + 3)
             if opts.max_probe_tokens > 0 and vocab and d else None)
    return SketchSpec(residual_subset(d, opts.max_residual, opts.seed),
                      token_subset(vocab, opts.max_tokens, opts.seed + 1), units, probe)


def _streamed_in_order(cand: Checkpoint, pairs: list[TensorPair]) -> list[str]:
    """The candidate tensors the streamed pass reads whole, row after row in storage order
    (plain layout, no q/k reordering, one stored array): what it can hash as it goes."""
    out = []
    for p in pairs:
        info = cand.info(p.name)
        if p.layout == "same" and info.qk_heads is None and info.packing is None:
            out.append(p.name)
    return out


def _one_pass(cand: Checkpoint, ref: Checkpoint, opts: CompareOptions,
              progress: Callable[[str, int], None] | None, hashes: bool = False, taps: PairTaps | None = None) -> _Pass:
    """``hashes``: the candidate's file and tensor SHA-256s are taken from the bytes the
    pass reads (tensors streamed in storage order); see :class:`StreamedDigests`."""
    arch_c, arch_r = cand.architecture, ref.architecture
    pairing: Pairing = pair_tensors(cand, ref)
    pairs = pairing.pairs
    layout = _layout(cand, ref, pairs, opts.layout)
    if layout.transposed_bytes:
        pairs = [replace(p, layout="transposed-bytes") if p.layout == "same" and p.is_matrix else p for p in pairs]
    layout = replace(layout, transposed_shape=tuple(p.name for p in pairs if p.layout == "transposed"))
    d_c, d_r = _n_embd(cand), _n_embd(ref)
    reason = None
    if d_r is None or d_c != d_r:
        reason = f"residual widths differ or are unknown (candidate {d_c}, reference {d_r})"
    spec = _sketch_spec(ref, opts)
    residual, tokens = spec.residual, spec.tokens
    heads = _heads(arch_r, arch_c)
    t1 = time.perf_counter()
    lineage: _Lineage | None = None
    if reason is None:
        mismatched = [u.name for u in pairing.unpaired if u.reason == "shape-mismatch"]
        residual_test = PermutationTest(len(residual), opts.permutations, opts.seed, opts.first_permutations)
        lineage = _Lineage(cand, ref, pairs, spec, heads, opts, residual_test,
                           side_heads=(_own_heads(arch_r), _own_heads(arch_c)), sketch_only=mismatched)
    digests = StreamedDigests(cand, _streamed_in_order(cand, pairs)) if hashes else None
    try:
        with cand.observing(digests) if digests is not None else nullcontext():
            outcomes = _run_pairs(cand, ref, pairs, {}, opts, spec if reason is None else None, progress,
                                  consume=lineage.consume if lineage is not None else None, file_order=hashes,
                                  taps=taps)
    except BaseException:
        if digests is not None:
            digests.close()
        raise
    t2 = time.perf_counter()
    test: PermutationTestResult | None = None
    alignment: Alignment | None = None
    t3 = t2
    if lineage is not None:
        assert lineage.test is not None
        if len(lineage.test):
            test = lineage.test.result()
        else:
            reason = "no comparable circuits (missing attention/MLP tensors)"
        t3 = time.perf_counter()
        if test is not None and opts.align and test.p_asymptotic < ALIGN_P:
            if lineage.deferred:
                # layers scored before the relation showed: their sketches again (alignment only)
                redo_pairs = [p for p in pairs if p.layer in set(lineage.deferred) and SketchBuilder.wants(p.role)]
                again = _Lineage(cand, ref, redo_pairs, SketchSpec(residual, tokens), heads, opts, None)
                _run_pairs(cand, ref, redo_pairs, {}, opts, (residual, tokens), None, consume=again.consume, light=True)
                lineage.aligned.update(again.aligned)
                lineage.align_s += again.align_s
            alignment = lineage.alignment()
            if not alignment.is_identity:
                touched = [p for p in pairs if p.name in alignment.transforms and not alignment.transforms[p.name].is_identity]
                redo = {o.pair.name: o for o in _run_pairs(cand, ref, touched, alignment.transforms, opts, None, None)}
                outcomes = [redo.get(o.pair.name, o) for o in outcomes]
    t4 = time.perf_counter()
    return _Pass(pairing, layout, outcomes, test, alignment, lineage, reason, (t1, t2, t3, t4), digests)


def _layers(ckpt: Checkpoint) -> list[int]:
    return sorted({int(i.layer) for i in ckpt.tensors.values() if i.layer is not None})


def _map_by_signatures(cand: Checkpoint, ref: Checkpoint, opts: CompareOptions) -> LayerMap | None:
    """The layer map of a candidate whose layers differ from the reference's, from each
    side's signatures read on its own (:func:`provenance.compare.layermap.read_signatures`)."""
    if _n_embd(cand) != _n_embd(ref) or not _layers(cand) or not _layers(ref):
        return None
    spec = replace(_sketch_spec(ref, opts), probe_tokens=None)
    sig_c = read_signatures(cand, spec, _own_heads(cand.architecture), opts.threads)
    sig_r = read_signatures(ref, spec, _own_heads(ref.architecture), opts.threads)
    table = distance_table(sig_c, sig_r)
    matches = match_layers(table, [s.layer for s in sig_c], [s.layer for s in sig_r])
    return describe(matches, len(sig_r), table)


@input_boundary
def map_layers_onto(candidate: str | os.PathLike[str], references: list[str | os.PathLike[str]],
                    options: CompareOptions | None = None) -> LayerMap | None:
    """The candidate's layers mapped onto the layers of several references at once (each
    match names its source reference): a frankenmerge of slices shows as such. Each
    checkpoint's signatures are read on their own (:func:`read_signatures`); None when the
    widths differ or a side has no layers."""
    opts = options or CompareOptions()
    with torch_threads(1), open_checkpoint(candidate) as cand:
        sigs_r: list[LayerSignature] = []
        sources: list[str] = []
        sig_c: list[LayerSignature] | None = None
        for reference in references:
            with open_checkpoint(reference) as ref:
                if _n_embd(cand) != _n_embd(ref) or not _layers(ref) or not _layers(cand):
                    return None
                spec = replace(_sketch_spec(ref, opts), probe_tokens=None)
                if sig_c is None:
                    sig_c = read_signatures(cand, spec, _own_heads(cand.architecture), opts.threads)
                got = read_signatures(ref, spec, _own_heads(ref.architecture), opts.threads)
            sigs_r += got
            sources += [model_name(reference)] * len(got)
    if not sig_c:
        return None
    table = distance_table(sig_c, sigs_r)
    matches = match_layers(table, [s.layer for s in sig_c], [s.layer for s in sigs_r], sources)
    return describe(matches, max((s.layer for s in sigs_r), default=-1) + 1, table)


def _vocabulary(cand: Checkpoint, ref: Checkpoint) -> VocabularyChange | None:
    """How token rows pair: by token string when both tokenizers are known and their lists
    differ (a reordered or changed vocabulary), else by id when the row counts differ."""
    rc, rr = _token_rows(cand), _token_rows(ref)
    ec, er = cand.tensors.get("token_embd.weight"), ref.tensors.get("token_embd.weight")
    if rc is None or rr is None or ec is None or er is None or ec.shape[1] != er.shape[1]:
        return None
    stored_c, stored_r = stored_token_list(cand), stored_token_list(ref)
    if rc == rr and stored_c is not None and stored_r is not None and len(stored_c) >= rc and stored_c == stored_r:
        return None  # the same stored list covering every row: pairing by id (what the lists would say)
    vc, vr = checkpoint_vocabulary(cand), checkpoint_vocabulary(ref)
    if vc is not None and vr is not None:
        by_string = pair_vocabularies(vc.tokens, vr.tokens, rc, rr)
        # only when rows moved: otherwise pairing by id is the same pairing (and a conversion
        # that spells a few tokens differently, e.g. padding rows, is not called a new vocabulary)
        if by_string is not None and by_string.moved > 0:
            return by_string
    return VocabularyChange(rc, rr, min(rc, rr)) if rc != rr else None


def _widths(arch_c: ArchRecord, arch_r: ArchRecord, cand: Checkpoint, ref: Checkpoint) -> tuple[WidthChange, ...]:
    out = []
    for what, c, r in (("MLP units", _n_ff(cand), _n_ff(ref)), ("KV heads", arch_c.n_head_kv, arch_r.n_head_kv),
                       ("attention heads", arch_c.n_head, arch_r.n_head)):
        if c and r and c != r:
            out.append(WidthChange(what, int(c), int(r)))
    return tuple(out)


def _views(cand: Checkpoint, ref: Checkpoint, layer_map: LayerMap | None,
           vocab: VocabularyChange | None) -> tuple[Checkpoint, Checkpoint]:
    rows = vocab.shared_rows if vocab else None
    index_c = vocab.candidate_ids if vocab else None
    index_r = vocab.reference_ids if vocab else None
    cand_v: Checkpoint = (vocabulary_view(cand, rows, index_c) if rows is not None and vocab
                          and (vocab.candidate_rows > rows or index_c is not None) else cand)
    if layer_map is not None and not layer_map.is_identity:
        return cand_v, layer_view(ref, layer_map.mapping(), rows, n_layer=len(layer_map.matches), token_index=index_r)
    ref_v: Checkpoint = (vocabulary_view(ref, rows, index_r) if rows is not None and vocab
                         and (vocab.reference_rows > rows or index_r is not None) else ref)
    return cand_v, ref_v


def _unpaired(cand: Checkpoint, ref: Checkpoint, run: _Pass, layer_map: LayerMap | None,
              vocab: VocabularyChange | None, widths: tuple[WidthChange, ...]) -> list[UnpairedTensor]:
    """Every tensor of either side left out of the per-tensor comparison, with the reason."""
    out: list[UnpairedTensor] = []
    width_text = ", ".join(w.describe() for w in widths)
    unmatched = {m.candidate_layer for m in layer_map.matches if m.reference_layer is None} if layer_map else set()
    for u in run.pairing.unpaired:
        info = (cand.tensors.get(u.name) if u.reason == "missing-in-reference" else None)
        if u.reason == "shape-mismatch" and widths:
            out.append(UnpairedTensor.of(u, f"{u.describe()} ({width_text}): compared through its layer's circuits, "
                                            "not element by element", "width-changed"))
        elif u.reason == "missing-in-reference" and u.name == "output.weight" and ref.architecture.tie_word_embeddings:
            out.append(UnpairedTensor.of(u, "output head only in the candidate: the reference ties it to the "
                                            "token embedding (untied, e.g. to fold the final norm into it)", "untied-output"))
        elif info is not None and info.layer in unmatched:
            out.append(UnpairedTensor.of(u, f"candidate layer {info.layer} matches no reference layer", "layer-unmatched"))
        else:
            out.append(UnpairedTensor.of(u))
    if layer_map is not None:
        for layer in layer_map.missing:
            for name, info in ref.tensors.items():
                if info.layer == layer:
                    out.append(UnpairedTensor(name, "layer-removed", f"reference layer {layer} has no counterpart in the "
                                                                     "candidate (removed)", None, info.shape))
    if vocab is not None and vocab.paired_by == "token string":
        for name in ("token_embd.weight", "output.weight"):
            c, r = cand.tensors.get(name), ref.tensors.get(name)
            if c is None or r is None or not (vocab.only_candidate_count or vocab.only_reference_count):
                continue
            out.append(UnpairedTensor(name, "vocabulary-rows",
                                      f"{vocab.shared_rows} rows paired by token string ({vocab.moved} at other ids); "
                                      f"{vocab.only_candidate_count} rows only in the candidate, "
                                      f"{vocab.only_reference_count} only in the reference", c.shape, r.shape))
    elif vocab is not None:
        for name in ("token_embd.weight", "output.weight"):
            c, r = cand.tensors.get(name), ref.tensors.get(name)
            if c is None or r is None or c.shape == r.shape:
                continue
            side = "candidate" if c.shape[0] > r.shape[0] else "reference"
            extra = abs(c.shape[0] - r.shape[0])
            out.append(UnpairedTensor(name, "vocabulary-rows",
                                      f"{extra} rows only in the {side} (token ids {vocab.shared_rows}-"
                                      f"{vocab.shared_rows + extra - 1}); the {vocab.shared_rows} shared rows are compared",
                                      c.shape, r.shape))
    return out


def _structure(cand: Checkpoint, ref: Checkpoint, run: _Pass, layer_map: LayerMap | None,
               vocab: VocabularyChange | None, widths: tuple[WidthChange, ...]) -> StructureEvidence:
    lineage = run.lineage
    unit = lineage.unit_test.result() if lineage is not None and lineage.unit_test is not None and len(lineage.unit_test) else None
    rotation: RotationEstimate | None = None
    # Procrustes only when the residual test sees nothing: either the unit-space test shows a
    # relation (the residual basis changed), or neither test does, where a rotation the
    # embedding rows still show is the one trace of a rotation combined with permuted MLP
    # units (docs/lineage.md), read only with at least as many probe rows as the width;
    # related pairs skip it (a d x d SVD is not free at 7B widths)
    undetermined: tuple[int, int] | None = None
    if (lineage is not None and lineage.probe_rows is not None and unit is not None
            and (run.test is None or run.test.p_asymptotic >= ALIGN_P)):
        n, d = lineage.probe_rows[0].shape
        if unit.p_asymptotic < ALIGN_P or n >= d:
            rotation = estimate_rotation(*lineage.probe_rows)
        else:
            undetermined = (n, d)
    return StructureEvidence(layer_map=layer_map, vocabulary=vocab, widths=widths, rotation=rotation,
                             undetermined_rotation=undetermined, unit_test=unit,
                             unit_rel_delta=dict(lineage.unit_delta) if lineage else {},
                             unpaired=tuple(_unpaired(cand, ref, run, layer_map, vocab, widths)))


def _plain_structure(structure: StructureEvidence) -> bool:
    """Layers, vocabulary and widths as the reference's: each candidate tensor's rotated
    counterpart is the reference tensor of the same name."""
    return ((structure.layer_map is None or structure.layer_map.is_identity) and structure.vocabulary is None
            and not structure.widths)


def _rotation_evidence(cand: Checkpoint, ref: Checkpoint, test: PermutationTestResult | None,
                       structure: StructureEvidence, opts: CompareOptions) -> StructureEvidence:
    """What a rotation still lets the tools see: a rotated lossy candidate's cells against the
    reference rotated into its basis (:mod:`.rotgrid`), or, when neither test sees a relation but
    the embedding rows give a rotation, the residual test on the candidate carried back by it
    (:mod:`.rotview`)."""
    if test is None or not _plain_structure(structure):
        return structure
    if opts.grid_check and rotated_relation(test, structure.unit_test):
        names = [n for n in cand.tensors if n in ref.tensors or n == "output.weight"]
        return replace(structure, rotated_grid=check_rotated_grid(cand, ref, names))
    rotation = structure.rotation
    if hidden_rotation(test, structure) and rotation is not None and rotation.matrix is not None:
        return replace(structure, derotated=derotated_test(cand, ref, rotation.matrix, opts))
    return structure


def derotated_test(cand: Checkpoint, ref: Checkpoint, rotation: np.ndarray, opts: CompareOptions) -> DerotatedTest | None:
    """The residual-permutation test (and alignment) on ``cand`` carried back by ``rotation``
    (``E_cand ~ E_ref rotation``, read from the embedding rows alone); None without circuits."""
    # layers only: the rotation was fitted on the embedding rows, whose circuit would match by construction
    # all permutations at once: its z is held to a gate (verdict.DEROTATED_Z_MIN), which a first
    # stage's estimate must not decide
    run = _one_pass(RotatedView(cand, rotation, layers_only=True), ref,
                    replace(opts, grid_check=False, first_permutations=0), None)
    if run.test is None:
        return None
    mats = [r for r in (_row(o) for o in run.outcomes) if r.is_matrix]
    moves = tuple(alignment_words(_alignment(run.alignment))) if run.alignment is not None else ()
    return DerotatedTest(run.test, overall_rel_delta(mats), moves)


def _compare_open(cpath: str, rpath: str, cand: Checkpoint, ref: Checkpoint, opts: CompareOptions,
                  progress: Callable[[str, int], None] | None, t0: float,
                  adapter_bases: tuple[str | None, str | None] = (None, None), hashes: bool = False,
                  taps: PairTaps | None = None) -> CompareResult:
    arch_c, arch_r = cand.architecture, ref.architecture
    vocab = _vocabulary(cand, ref)
    layer_map = _map_by_signatures(cand, ref, opts) if opts.layer_map and _layers(cand) != _layers(ref) else None
    cand_v, ref_v = _views(cand, ref, layer_map, vocab)
    # the pass hashes the candidate as it reads it where it reads the stored file itself (not a
    # view of part of it, not an adapter applied to its base)
    streamed_hashes = hashes and cand_v is cand and not isinstance(cand, AdapterOnBase)
    run = _one_pass(cand_v, ref_v, opts, progress, hashes=streamed_hashes, taps=taps)
    candidate_hashes = CheckpointHashes(*run.digests.finish()) if run.digests is not None else None
    if layer_map is None and run.lineage is not None:
        layer_map = run.lineage.layer_map(len(_layers(ref)))
        if layer_map is not None and not layer_map.is_identity and len(layer_map.mapping()) == len(layer_map.matches):
            # a same-depth candidate whose layers moved (every layer matched elsewhere): compare the right layers
            cand_v, ref_v = _views(cand, ref, layer_map, vocab)
            run = _one_pass(cand_v, ref_v, opts, progress, taps=taps)
        elif layer_map is not None:
            layer_map = kept_identity(layer_map)
    structure = _structure(cand, ref, run, layer_map, vocab, _widths(arch_c, arch_r, cand, ref))
    structure = _rotation_evidence(cand_v, ref_v, run.test, structure, opts)
    pairing, layout, outcomes, test, alignment, lineage, reason = (
        run.pairing, run.layout, run.outcomes, run.test, run.alignment, run.lineage, run.reason)
    t1, t2, t3, t4 = run.times
    rows = [_row(o) for o in outcomes]
    if test is not None and test.p_asymptotic < ALIGN_P and opts.grid_check:
        rows = explain_codes(cand_v, ref_v, rows, alignment.transforms if alignment else {},
                             lambda info: _sample_rows(info, opts))
    aligned = _alignment(alignment) if alignment else None
    verdict = decide(test, rows, arch_c, arch_r, layout, aligned, reason, structure)
    adapter = None
    if isinstance(cand, AdapterOnBase) or isinstance(ref, AdapterOnBase):
        adapter = adapter_evidence(cand, ref, cpath, rpath, adapter_bases, rows,
                                   alignment.transforms if alignment else {})
        verdict = adapter_verdict(verdict, adapter, rows, cand if isinstance(cand, AdapterOnBase) else ref)
    claims = compare_claims(dict(cand.metadata_claims), dict(ref.metadata_claims), verdict.related, verdict.kind,
                            candidate_is_adapter=isinstance(cand, AdapterOnBase))
    if claims.disagreements:
        verdict = replace(verdict, evidence=verdict.evidence + tuple("metadata: " + d for d in claims.disagreements))
    total_bytes = sum(o.bytes_read for o in outcomes)
    timing = CompareTiming(
        total_s=round(time.perf_counter() - t0, 3), stream_s=round(t2 - t1, 3),
        test_s=round(t3 - t2 + (lineage.test_s if lineage else 0.0), 3),
        test_during_stream_s=round(lineage.test_s, 3) if lineage else 0.0,
        align_during_stream_s=round(lineage.align_s, 3) if lineage else 0.0,
        align_restream_s=round(t4 - t3, 3),
        tensor_bytes=total_bytes, stream_gb_per_s=round(total_bytes / max(t2 - t1, 1e-9) / 1e9, 3))
    return CompareResult(
        candidate=_describe(cpath, cand), reference=_describe(rpath, ref), verdict=verdict, test=test, claims=claims,
        pairing=_pairing(pairing), layout=layout, alignment=aligned, tensors=tuple(rows), options=opts, timing=timing,
        structure=structure, adapter=adapter, candidate_hashes=candidate_hashes,
    )
