"""A PEFT LoRA adapter on its base model, as lineage sees it (docs/lineage.md, "PEFT adapters").

* :class:`AdapterOnBase` is the adapter applied to a base checkpoint, read like any checkpoint:
  each targeted weight's canonical rows are the base's plus ``scale * B @ A`` (computed chunk
  by chunk from the two small factors; HF q/k rows put in llama.cpp's order like the base's),
  modules the adapter saved whole replace the base's. Its shapes are checked against the base
  when it is built: factors that disagree with the base are one input error naming the
  adapter's tensor.
* :func:`fit_adapter` asks whether a candidate model *is* that merge: for each targeted weight,
  the candidate's change from the base ``M - W`` projected on the adapter's ``D = scale B A``
  (``c = <M - W, D> / ||D||^2``: 1 when merged, 0 when not, whatever the storage rounding,
  which is independent of ``D``), and what is left (``||M - W - D|| / ||D||``) beside the
  rounding the candidate's storage type explains.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from provenance.compare.copies import inside_grid
from provenance.compare.result import AdapterEvidence, AdapterModuleFit, LineageVerdict, TensorComparison
from provenance.compare.transform import Transform
from provenance.errors import CheckpointError, MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats.base import Checkpoint, ReadObserver, TensorInfo
from provenance.formats.dtypes import torch_dtype
from provenance.formats.peft_adapter import LoraModule, PeftAdapterCheckpoint
from provenance.formats.rows import RowReader
from provenance.names.canonical import hf_to_canonical
from provenance.names.qk_permute import llama_qk_row_order

#: a merged model's projection coefficient on the adapter's update lies within this of 1
COEFFICIENT_TOLERANCE = 0.05
#: left over beyond rounding, as a fraction of ||D||: float arithmetic of a merge done in f32
FLOAT_FLOOR = 1e-3
#: the residual energy a merge may leave, in units of the candidate's expected rounding energy
ROUNDING_FACTOR = 4.0


@dataclass(frozen=True)
class _Target:
    """One base weight the adapter changes: its low-rank update and/or a saved replacement."""

    module: LoraModule | None
    replacement: str | None
    """The adapter's stored name of a full replacement of the base weight."""
    qk_heads: int | None
    """Heads whose rotary rows llama.cpp reorders (the update is in HF order)."""


class _UpdatedRows(RowReader):
    """Canonical rows of a weight the adapter changes: the base's (or the saved replacement's)
    rows, plus ``left[rows] @ right``; every read path of :class:`RowReader` (read, read_into,
    gather) goes through ``_decode``."""

    def __init__(self, view: AdapterOnBase, name: str, max_rows: int | None, source: RowReader,
                 factors: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        super().__init__(view, name, max_rows)
        self._source, self._factors = source, factors

    def _decode(self, start: int, stop: int, target: torch.Tensor) -> torch.Tensor:
        self._source.read_into(start, stop, target)
        if self._factors is not None:
            left, right = self._factors
            target.addmm_(left[start:stop], right)
        return target

    def raw(self, start: int, stop: int) -> np.ndarray:
        raise UnsupportedCheckpoint(self.ckpt.path, f"{self.info.name} is computed (base + adapter): it has no stored bytes")

    def close(self) -> None:
        self._source.close()
        super().close()


class AdapterOnBase(Checkpoint):
    """``base + adapter``: the base's tensors, the adapter's targets updated (float32)."""

    format = "peft-adapter"

    def __init__(self, adapter: PeftAdapterCheckpoint, base: Checkpoint) -> None:
        super().__init__(adapter.path)
        self.adapter, self.base = adapter, base
        self.metadata = dict(base.metadata)
        self.files = list(base.files) + list(adapter.files)
        self.tensors = dict(base.tensors)
        self.targets: dict[str, _Target] = {}
        for module in adapter.modules:
            name, info = self._base_weight(module.weight, module.b)
            if info.shape != module.shape:
                raise MalformedCheckpoint(adapter.files[0].path, f"lora factors of {module.module} make a "
                                          f"{'x'.join(map(str, module.shape))} update; the base's {info.name} is "
                                          f"{'x'.join(map(str, info.shape))}", field=module.b, offset=8)
            self.targets[name] = _Target(module, None, self._qk_heads(info))
        for weight, stored in adapter.replacements.items():
            name, info = self._base_weight(weight, stored)
            if adapter.stored(stored).shape != info.shape:
                raise MalformedCheckpoint(adapter.files[0].path, f"{stored} is {list(adapter.stored(stored).shape)}; "
                                          f"the base's {info.name} is {list(info.shape)}", field=stored, offset=8)
            if self._qk_heads(info):
                raise UnsupportedCheckpoint(adapter.files[0].path, "a saved attention q/k module is not supported",
                                            field=stored, offset=8)
            old = self.targets.get(name)
            self.targets[name] = _Target(old.module if old else None, stored, old.qk_heads if old else None)
        for name in self.targets:
            info = self.tensors[name]
            # a packed base weight (a QLoRA base in NF4, GPTQ ...) is decoded by the base's reader
            self.tensors[name] = replace(info, dtype="F32", block_size=1, block_bytes=4, ggml_type=None, qk_heads=None,
                                         packing=None, n_bytes=info.n_elements * 4)

    def _base_weight(self, hf_name: str, stored: str) -> tuple[str, TensorInfo]:
        arch = self.base.architecture
        name = hf_to_canonical(hf_name, arch.arch, arch.n_layer) or hf_name
        info = self.base.tensors.get(name) or next((t for t in self.base.tensors.values() if t.stored_name == hf_name), None)
        if info is None:
            raise MalformedCheckpoint(self.adapter.files[0].path, f"the base has no weight {hf_name} ({name}) for this "
                                      "adapter tensor", field=stored, offset=8)
        return info.name, info

    def _qk_heads(self, info: TensorInfo) -> int | None:
        arch = self.base.architecture
        if not arch.qk_permuted_in_gguf or info.role not in ("attn_q", "attn_k"):
            return None
        return arch.n_head if info.role == "attn_q" else arch.n_head_kv

    @property
    def architecture(self) -> Any:
        return self.base.architecture

    @property
    def metadata_claims(self) -> Mapping[str, Any]:
        return self.adapter.metadata_claims

    # ----- the update -----------------------------------------------------------------------------
    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(left, right)`` with ``update = left @ right`` in canonical rows (None: no low-rank update)."""
        target = self.targets[name]
        module = target.module
        if module is None:
            return None
        a = torch.from_numpy(self.adapter.read(module.a))
        b = torch.from_numpy(self.adapter.read(module.b))
        if module.kind == "linear" and not self.adapter.adapter_config.fan_in_fan_out:
            left, right = b, a * module.scale  # delta = scale * B @ A, rows are outputs
        else:  # embedding or Conv1D-style weights: delta = scale * (B @ A).T
            left, right = a.T.contiguous(), b.T * module.scale
        if target.qk_heads:
            left = left[torch.from_numpy(llama_qk_row_order(left.shape[0], target.qk_heads).copy())]
        return left.contiguous(), right.contiguous()

    def row_reader(self, name: str, max_rows: int | None = None) -> RowReader:
        if name not in self.targets:
            return self.base.row_reader(name, max_rows)
        target = self.targets[name]
        source = (self.adapter.row_reader(target.replacement, max_rows) if target.replacement
                  else self.base.row_reader(name, max_rows))
        return _UpdatedRows(self, name, max_rows, source, self.factors(name))

    def read_blocks(self, name: str, rows: np.ndarray, first_block: np.ndarray, n_blocks: int,
                    observe: ReadObserver | None = None) -> np.ndarray:
        if name not in self.targets:
            return self.base.read_blocks(name, rows, first_block, n_blocks, observe)
        with self.row_reader(name) as reader:
            full = reader.gather(np.asarray(rows, dtype=np.int64))
        columns = np.asarray(first_block, dtype=np.int64)[:, None] + np.arange(n_blocks)
        return np.take_along_axis(full.numpy(), columns, axis=1)

    def raw_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        if name in self.targets:
            raise UnsupportedCheckpoint(self.path, f"{name} is computed (base + adapter): it has no stored bytes")
        return self.base.raw_rows(name, start, stop)


# ----- is a candidate this adapter merged into its base? ----------------------------------------------

def _rounding_energy(values: torch.Tensor, dtype: str) -> float | None:
    """Expected squared rounding error of storing ``values`` as ``dtype`` (uniform within a ulp)."""
    storage = torch_dtype(dtype)
    if storage is None or not storage.is_floating_point:
        return None
    bits = round(-math.log2(torch.finfo(storage).eps))  # explicit mantissa bits: 23 F32, 10 F16, 7 BF16
    _, exponent = torch.frexp(values)
    ulp = torch.ldexp(torch.ones((), dtype=torch.float64), exponent.to(torch.float64) - 1 - bits)
    ulp = torch.where(values == 0, 0.0, ulp)  # a stored zero is exact
    return float((ulp * ulp).sum()) / 12.0


def _fit_one(candidate: Checkpoint, view: AdapterOnBase, name: str, transform: Transform | None,
             chunk_rows: int) -> AdapterModuleFit:
    target = view.targets[name]
    module = target.module
    assert module is not None
    info = view.info(name)
    left, right = view.factors(name)  # type: ignore[misc]
    stored = candidate.info(name).dtype
    transform = transform or Transform()
    dd = md = rr = mm = 0.0
    noise: float | None = 0.0
    cand = candidate.row_reader(name, chunk_rows)
    base = (view.adapter.row_reader(target.replacement, chunk_rows) if target.replacement
            else view.base.row_reader(name, chunk_rows))
    try:
        for a in range(0, info.n_rows, chunk_rows):
            b = min(info.n_rows, a + chunk_rows)
            m = cand.gather(transform.candidate_rows(a, b)) if transform.permutes_rows else cand.read(a, b)
            m = transform.apply(m, a).double()
            change = m - base.read(a, b).double()
            delta = (left[a:b] @ right).double()
            dd += float((delta * delta).sum())
            md += float((change * delta).sum())
            mm += float((change * change).sum())
            rest = change - delta
            rr += float((rest * rest).sum())
            energy = _rounding_energy(m, stored) if noise is not None else None
            noise = None if energy is None or noise is None else noise + energy
    finally:
        cand.close()
        base.close()
    scale = math.sqrt(dd) if dd > 0 else float("nan")
    return AdapterModuleFit(name=name, module=module.module, rank=module.rank, scale=module.scale, delta_norm=scale,
                            coefficient=md / dd if dd > 0 else None,
                            residual=math.sqrt(rr) / scale if dd > 0 else None,
                            rounding=math.sqrt(noise) / scale if noise is not None and dd > 0 else None,
                            change_norm=math.sqrt(mm))


def module_matches(fit: AdapterModuleFit) -> bool:
    """This module's change is the adapter's update, up to the candidate's storage rounding."""
    if fit.coefficient is None or fit.residual is None or abs(fit.coefficient - 1) > COEFFICIENT_TOLERANCE:
        return False
    allowed = max(FLOAT_FLOOR, math.sqrt(ROUNDING_FACTOR) * (fit.rounding or 0.0))
    return fit.residual <= allowed


def fit_adapter(candidate: Checkpoint, view: AdapterOnBase, names: list[str],
                transforms: Mapping[str, Transform] | None = None, chunk_rows: int = 256) -> tuple[AdapterModuleFit, ...]:
    """Per low-rank target paired with the candidate: projection coefficient, residual and rounding (module doc)."""
    transforms = transforms or {}
    return tuple(_fit_one(candidate, view, n, transforms.get(n), chunk_rows) for n in names
                 if view.targets[n].module is not None)


def adapter_modules(view: AdapterOnBase) -> tuple[AdapterModuleFit, ...]:
    """The update sizes alone (the adapter is the candidate): ``||D||`` per target, from the factors
    (``||L R||^2 = trace(L^T L R R^T)``, no full matrix)."""
    out = []
    for name, target in view.targets.items():
        if target.module is None:
            continue
        left, right = view.factors(name)  # type: ignore[misc]
        gram = (left.double().T @ left.double()) * (right.double() @ right.double().T)
        out.append(AdapterModuleFit(name=name, module=target.module.module, rank=target.module.rank,
                                    scale=target.module.scale, delta_norm=math.sqrt(max(float(gram.sum()), 0.0))))
    return tuple(out)


def describe(side: str, adapter_name: str, base_name: str, view: AdapterOnBase, fits: tuple[AdapterModuleFit, ...],
             untouched_unchanged: bool | None) -> AdapterEvidence:
    """The typed evidence, with its one-sentence finding."""
    config = view.adapter.adapter_config
    ranks = sorted({f.rank for f in fits}) or sorted({m.rank for m in view.adapter.modules})
    what = (f"LoRA adapter (rank {'/'.join(map(str, ranks))}, alpha {config.lora_alpha:g}, "
            f"{len(view.adapter.modules)} modules: {', '.join(sorted({m.module.rsplit('.', 1)[-1] for m in view.adapter.modules}))})")
    merged: bool | None = None
    if side == "candidate":
        finding = f"the candidate is a {what} applied to its base {base_name}"
    elif not fits:
        finding = f"no targeted weight of the {what} could be fitted (quantized candidate tensors?)"
    else:
        coefficients = [f.coefficient for f in fits if f.coefficient is not None]
        matched = [f for f in fits if module_matches(f)]
        merged = len(matched) == len(fits) and bool(untouched_unchanged)
        low, high = (min(coefficients), max(coefficients)) if coefficients else (float("nan"), float("nan"))
        worst = max((f.residual or 0.0) for f in fits)
        if merged:
            finding = (f"the candidate is this {what} merged into {base_name}: on all {len(fits)} targeted weights its "
                       f"change is the adapter's update (coefficient {low:.4f}..{high:.4f}, residual <= {worst:.2g} "
                       "of the update, within storage rounding), every other weight unchanged")
        elif all(abs(c - 1) <= COEFFICIENT_TOLERANCE for c in coefficients):
            finding = (f"the candidate contains this {what}'s update (coefficient {low:.4f}..{high:.4f}) plus other "
                       f"changes (residual up to {worst:.3g} of the update" + (", other weights changed too)"
                                                                                 if untouched_unchanged is False else ")"))
        elif all(abs(c) <= COEFFICIENT_TOLERANCE for c in coefficients):
            finding = f"the candidate does not contain this {what}'s update (coefficient {low:.3f}..{high:.3f})"
        else:
            finding = (f"the candidate is not this {what} merged: coefficient {low:.3f}..{high:.3f} "
                       f"(1 = merged, 0 = absent), residual up to {worst:.3g} of the update")
    return AdapterEvidence(side=side, adapter=adapter_name, base=base_name, config=config.to_dict(), modules=fits,
                           merged=merged, finding=finding)


# ----- compare's use -----------------------------------------------------------------------------

def with_base(checkpoint: Checkpoint, base: str | None, stack: ExitStack) -> tuple[Checkpoint, str | None]:
    """``checkpoint`` itself, or, for an adapter, the adapter on its base (``base``, else the
    adapter's ``base_model_name_or_path``), the base kept open by ``stack``; and the base's name."""
    if not isinstance(checkpoint, PeftAdapterCheckpoint):
        return checkpoint, None
    from provenance.formats import open_checkpoint

    declared = checkpoint.adapter_config.base_model_name_or_path
    name = base or declared
    if not name:
        raise UnsupportedCheckpoint(checkpoint.path, "an adapter is compared on its base model: give --base (the "
                                                     "adapter's config names none)", field="adapter_config: "
                                                     "base_model_name_or_path")
    try:
        opened = stack.enter_context(open_checkpoint(name))
    except CheckpointError as exc:
        if base:
            raise
        raise UnsupportedCheckpoint(checkpoint.path, f"its base {name!r} (base_model_name_or_path) cannot be opened "
                                                     f"({exc.message}); give --base", field="adapter_config: "
                                                     "base_model_name_or_path") from None
    if isinstance(opened, PeftAdapterCheckpoint):
        raise UnsupportedCheckpoint(name, "the base of an adapter must be a model, not another adapter", field="base")
    return AdapterOnBase(checkpoint, opened), name


def _unchanged(row: TensorComparison) -> bool:
    return row.max_abs_delta == 0.0 or inside_grid(row)


def adapter_evidence(cand: Checkpoint, ref: Checkpoint, cpath: str, rpath: str, bases: tuple[str | None, str | None],
                     rows: list[TensorComparison], transforms: Mapping[str, Transform]) -> AdapterEvidence:
    """The adapter's evidence for a comparison where the candidate or the reference is one
    (the reference's, when both are)."""
    if isinstance(ref, AdapterOnBase):
        paired = {r.name for r in rows}
        targets = [n for n in ref.targets if n in paired]
        untouched = [r for r in rows if r.name not in ref.targets]
        fits = fit_adapter(cand, ref, targets, transforms)
        return describe("reference", rpath, bases[1] or "", ref, fits, all(_unchanged(r) for r in untouched))
    assert isinstance(cand, AdapterOnBase)
    return describe("candidate", cpath, bases[0] or "", cand, adapter_modules(cand), None)


def adapter_verdict(verdict: LineageVerdict, evidence: AdapterEvidence, rows: list[TensorComparison],
                    view: AdapterOnBase) -> LineageVerdict:
    """The verdict with the adapter's evidence: "lora-merge" when the candidate is the merge of
    this adapter (reference side), or when the adapter applied to its base (candidate side)
    changes the reference exactly where the adapter does."""
    evidence_lines = (*verdict.evidence, "adapter: " + evidence.finding)
    if not verdict.related:
        return replace(verdict, evidence=evidence_lines)
    # the p-value part of decide's summary ("; p = ..."), kept after the new description
    p = verdict.summary[len(verdict.description):] if verdict.summary.startswith(verdict.description) else ""
    if evidence.side == "reference" and evidence.merged:
        text = f"lora-merge of this adapter into its base ({evidence.base})"
        return replace(verdict, kind="lora-merge", description=text, summary=text + p, evidence=evidence_lines)
    if evidence.side == "reference":
        coefficients = [f.coefficient for f in evidence.modules if f.coefficient is not None]
        if coefficients:
            text = (f"{verdict.description}; not this adapter merged into its base (coefficient "
                    f"{min(coefficients):.3f}..{max(coefficients):.3f} on its update, 1 = merged)")
            return replace(verdict, description=text, summary=text + p, evidence=evidence_lines)
    changed = {r.name for r in rows if not _unchanged(r)}
    if evidence.side == "candidate" and changed and changed <= set(view.targets):
        text = (f"the adapter applied to the reference: a LoRA merge changing {len(changed)} of its weights, "
                f"all of them the adapter's targets")
        return replace(verdict, kind="lora-merge", description=text, summary=text + p, evidence=evidence_lines)
    return replace(verdict, evidence=evidence_lines)
