"""One reference entry, and its on-disk form: ``<id>.json`` plus ``<id>.npz`` (schema v1).

The JSON is the diffable part (sorted keys, one entry per file): identity, provenance,
architecture, tokenizer hashes, file and tensor hashes, and the list of fingerprinted
tensors. Arrays live in the ``.npz`` (written byte-for-byte deterministically) and are
referenced by the JSON with their SHA-256, so a tampered or stale array file is caught
on load. See ``docs/refdb.md`` for every field.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from provenance.errors import CheckpointError, ProvenanceError
from provenance.formats.jsonsafe import loads_strict
from provenance.formats.vocabulary import MAX_VOCABULARY
from provenance.refdb.positions import PUBLIC_SEED, SPAN_LENGTH, SPANS_PER_TENSOR, Spans
from provenance.refdb.summaries import N_QUANTILES, Summary
from provenance.refdb.tokfp import SKETCH_K, TokenizerFingerprint
from provenance.refdb.weightfp import TensorPrint, WeightFingerprint

SCHEMA = "provenance.refdb-entry/1"
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
ARCH_FIELDS = ("arch", "hf_architecture", "n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "vocab_size",
               "context_length", "rope_freq_base", "rope_dim", "norm_eps", "n_expert", "n_expert_used", "tie_word_embeddings")


class RefDBError(ProvenanceError, ValueError):
    """A reference entry that is malformed, inconsistent or of an unknown schema."""


@dataclass
class RefEntry:
    id: str
    family: str
    description: str = ""
    license: str = "unknown"
    provenance: dict[str, Any] = field(default_factory=dict)
    """``kind`` (``published-facts`` or ``computed``), ``sources`` (where each fact comes
    from), ``computed_by`` (tool, version, how), ``source_files`` (name, size, sha256)."""
    architecture: dict[str, Any] | None = None
    tokenizer: TokenizerFingerprint | None = None
    tokenizer_same_as: str | None = None
    """Another entry whose tokenizer fingerprint this one shares (resolved on load)."""
    files: list[dict[str, Any]] = field(default_factory=list)
    """The model's own files: ``name``, ``size``, ``sha256``."""
    tensors: dict[str, dict[str, Any]] | None = None
    """Canonical name -> ``shape``, ``dtype``, ``sha256`` of the stored bytes, ``constant``."""
    weights: WeightFingerprint | None = None
    derived_from: str | None = None
    notes: list[str] = field(default_factory=list)
    lineage: str | None = None
    """The tokenizer lineage the entry belongs to as public facts declare it (``openai-cl100k``
    for Llama 3, whose vocabulary extends cl100k): ground truth for the confusion-matrix tests
    and the calibration, never used as evidence by ``identify``."""

    def signals(self) -> list[str]:
        out = []
        if self.files:
            out.append("file-hashes")
        if self.tensors:
            out.append("tensor-hashes")
        if self.architecture:
            out.append("architecture")
        if self.tokenizer or self.tokenizer_same_as:
            out.append("tokenizer")
        if self.weights:
            out.append("weight-fingerprint")
        return out


# ----- serialization ------------------------------------------------------------------

def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A .npz whose bytes depend only on the arrays (fixed timestamps, sorted members)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=9)
    return buffer.getvalue()


def encode_entry(entry: RefEntry) -> tuple[str, bytes | None]:
    """``(json text, npz bytes or None)`` for an entry."""
    if not ID_PATTERN.match(entry.id):
        raise RefDBError(f"entry id {entry.id!r} must match {ID_PATTERN.pattern}")
    arrays: dict[str, np.ndarray] = {}
    doc: dict[str, Any] = {
        "schema": SCHEMA, "id": entry.id, "family": entry.family, "description": entry.description,
        "license": entry.license, "provenance": entry.provenance, "derived_from": entry.derived_from,
        "lineage": entry.lineage,
        "notes": entry.notes, "architecture": entry.architecture, "files": entry.files, "tensors": entry.tensors,
        "tokenizer": None, "weight_fingerprint": None, "arrays": None,
    }
    if entry.tokenizer is not None:
        doc["tokenizer"] = entry.tokenizer.to_json()
        arrays["token_sketch_hashes"] = entry.tokenizer.sketch_hashes.astype("<u8")
        arrays["token_sketch_ids"] = entry.tokenizer.sketch_ids.astype("<u4")
    elif entry.tokenizer_same_as:
        doc["tokenizer"] = {"same_as": entry.tokenizer_same_as}
    if entry.weights is not None:
        doc["weight_fingerprint"], fp_arrays = _encode_weights(entry.weights)
        arrays.update(fp_arrays)
    npz = _npz_bytes(arrays) if arrays else None
    if npz is not None:
        import hashlib

        doc["arrays"] = {"file": f"{entry.id}.npz", "sha256": hashlib.sha256(npz).hexdigest(), "members": sorted(arrays)}
    text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"
    return text, npz


def _encode_weights(fp: WeightFingerprint) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    listing, rows, starts, values, summaries = [], [], [], [], []
    for tp in fp.tensors:
        summary = tp.summary or Summary(np.zeros(0), np.zeros(0), np.zeros(0))
        listing.append({
            "name": tp.name, "shape": list(tp.shape), "n_spans": len(tp.spans.rows), "span_length": tp.spans.length,
            "constant": tp.constant,
            "summary": {"n_row": len(summary.row_norms), "n_col": len(summary.col_norms), "n_sv": len(summary.singular)},
        })
        rows.append(tp.spans.rows)
        starts.append(tp.spans.starts)
        values.append(tp.values.reshape(-1))
        summaries.append(summary.vector())
    doc = {
        "version": 1, "seed": PUBLIC_SEED, "spans_per_tensor": SPANS_PER_TENSOR, "span_length": SPAN_LENGTH,
        "summary_quantiles": N_QUANTILES, "value_dtype": "float16", "tensors": listing,
    }

    def cat(parts: list[np.ndarray], dtype: str) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return doc, {
        "fp_rows": cat(rows, "<i8"), "fp_starts": cat(starts, "<i8"),
        "fp_values": cat(values, "<f2"), "fp_summaries": cat(summaries, "<f8"),
    }


def decode_entry(text: str, npz: bytes | None, where: str) -> RefEntry:
    """Parse an entry's JSON (and arrays); every inconsistency raises :class:`RefDBError`."""
    import hashlib

    try:  # strict, as for every file-derived JSON: duplicate keys and NaN are errors
        doc = loads_strict(text.encode("utf-8"), where, "entry")
    except CheckpointError as exc:
        raise RefDBError(f"{where}: not JSON ({exc.message})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise RefDBError(f"{where}: schema {doc.get('schema') if isinstance(doc, dict) else None!r}, expected {SCHEMA}")
    if not isinstance(doc.get("id"), str) or not ID_PATTERN.match(doc["id"]):
        raise RefDBError(f"{where}: bad entry id {doc.get('id')!r}")
    arrays: dict[str, np.ndarray] = {}
    if doc.get("arrays"):
        if npz is None:
            raise RefDBError(f"{where}: its array file {doc['arrays'].get('file')!r} is missing")
        if hashlib.sha256(npz).hexdigest() != doc["arrays"].get("sha256"):
            raise RefDBError(f"{where}: {doc['arrays'].get('file')} does not match the sha256 the entry records")
        with np.load(io.BytesIO(npz), allow_pickle=False) as loaded:
            arrays = {name: loaded[name] for name in loaded.files}
    entry = RefEntry(
        id=doc["id"], family=str(doc.get("family", "")), description=str(doc.get("description", "")),
        license=str(doc.get("license", "unknown")), provenance=dict(doc.get("provenance") or {}),
        architecture=doc.get("architecture"), files=list(doc.get("files") or []), tensors=doc.get("tensors"),
        derived_from=doc.get("derived_from"), notes=list(doc.get("notes") or []),
        lineage=doc.get("lineage") if isinstance(doc.get("lineage"), str) else None,
    )
    tok = doc.get("tokenizer")
    if isinstance(tok, dict) and "same_as" in tok:
        entry.tokenizer_same_as = str(tok["same_as"])
    elif isinstance(tok, dict):
        try:
            entry.tokenizer = TokenizerFingerprint.from_json(tok, arrays["token_sketch_hashes"], arrays["token_sketch_ids"])
        except KeyError as exc:
            raise RefDBError(f"{where}: tokenizer field or array {exc} missing") from None
        except (TypeError, ValueError) as exc:
            raise RefDBError(f"{where}: tokenizer fingerprint: {str(exc)[:200]}") from None
        _check_sketch(entry.tokenizer, where)
    if doc.get("weight_fingerprint"):
        entry.weights = _decode_weights(doc["weight_fingerprint"], arrays, where)
    return entry


def _check_sketch(fp: TokenizerFingerprint, where: str) -> None:
    """What the comparison assumes of a stored sketch (:mod:`provenance.refdb.tokfp`): the
    bottom-k distinct token hashes, strictly increasing, each with an id inside the vocabulary.
    An entry file edited or built by other code must not bend the shares (an unsorted sketch
    moves tau, a repeated hash counts twice: shares above 1)."""
    hashes, ids = fp.sketch_hashes, fp.sketch_ids
    if hashes.ndim != 1 or ids.shape != hashes.shape or hashes.size > SKETCH_K:
        raise RefDBError(f"{where}: tokenizer sketch of {hashes.shape} hashes and {ids.shape} ids "
                         f"(expected two equal 1-D arrays of at most {SKETCH_K})")
    if not 0 < fp.vocab_size <= MAX_VOCABULARY or not 0 < fp.distinct_tokens <= fp.vocab_size or hashes.size > fp.distinct_tokens:
        raise RefDBError(f"{where}: tokenizer of {fp.vocab_size} tokens, {fp.distinct_tokens} distinct, "
                         f"sketched {hashes.size}: inconsistent")
    if hashes.size > 1 and not bool(np.all(hashes[1:] > hashes[:-1])):
        raise RefDBError(f"{where}: tokenizer sketch hashes are not strictly increasing")
    if ids.size and int(ids.max()) >= fp.vocab_size:
        raise RefDBError(f"{where}: tokenizer sketch id {int(ids.max())} is outside the {fp.vocab_size}-token vocabulary")


def _decode_weights(doc: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> WeightFingerprint:
    try:
        rows, starts = arrays["fp_rows"], arrays["fp_starts"]
        values, summaries = arrays["fp_values"].astype(np.float32), arrays["fp_summaries"]
    except KeyError as exc:
        raise RefDBError(f"{where}: weight fingerprint array {exc} missing") from None
    prints, span_at, value_at, summary_at = [], 0, 0, 0
    for item in doc.get("tensors", []):
        n_spans, length = int(item["n_spans"]), int(item["span_length"])
        s = item["summary"]
        n_row, n_col, n_sv = int(s["n_row"]), int(s["n_col"]), int(s["n_sv"])
        n_values, n_summary = n_spans * length, n_row + n_col + n_sv
        if span_at + n_spans > len(rows) or value_at + n_values > len(values) or summary_at + n_summary > len(summaries):
            raise RefDBError(f"{where}: weight fingerprint arrays are shorter than its tensor list")
        vec = summaries[summary_at : summary_at + n_summary]
        summary = Summary(vec[:n_row], vec[n_row : n_row + n_col], vec[n_row + n_col :]) if n_summary else None
        prints.append(TensorPrint(
            name=str(item["name"]), shape=tuple(int(d) for d in item["shape"]),
            spans=Spans(rows[span_at : span_at + n_spans].astype(np.int64), starts[span_at : span_at + n_spans].astype(np.int64), length),
            values=values[value_at : value_at + n_values].reshape(n_spans, length), summary=summary,
            constant=bool(item.get("constant", False)),
        ))
        span_at, value_at, summary_at = span_at + n_spans, value_at + n_values, summary_at + n_summary
    if (span_at, value_at, summary_at) != (len(rows), len(values), len(summaries)):
        raise RefDBError(f"{where}: weight fingerprint arrays are longer than its tensor list")
    return WeightFingerprint(prints)
