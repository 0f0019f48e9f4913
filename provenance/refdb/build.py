"""Build a reference entry from a local model (any supported format).

Everything in a built entry is measured from the files at hand: file and tensor hashes
from one sequential pass, the architecture record and tokenizer the file states, and
the weight fingerprint from its tensors. Nothing is looked up or assumed.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint
from provenance.formats.vocabulary import checkpoint_vocabulary
from provenance.hashing import checkpoint_sha256s
from provenance.refdb.schema import ARCH_FIELDS, RefEntry
from provenance.refdb.tokfp import fingerprint_vocabulary
from provenance.refdb.weightfp import TensorStats, build_fingerprint, informative, tensor_stats
from provenance.version import __version__


def architecture_dict(ckpt: Checkpoint, source: str) -> dict[str, Any]:
    record = asdict(ckpt.architecture)
    return {**{k: record.get(k) for k in ARCH_FIELDS}, "source": source}


def streamed_stats(ckpt: Checkpoint, weights: bool) -> dict[str, TensorStats]:
    """One streamed pass per tensor: constancy for every tensor that can be decoded, and the
    summary for the ones a weight fingerprint covers. Peak memory is one chunk of rows."""
    out = {}
    for info in ckpt.tensors.values():
        if info.n_elements <= 1:
            continue
        try:
            out[info.name] = tensor_stats(ckpt, info, with_summary=weights and informative(info))
        except (NotImplementedError, ValueError):
            continue  # a type the decoders cannot read (its hash still counts)
    return out


def build_entry(
    path: str | Path,
    entry_id: str,
    family: str,
    *,
    source: str = "",
    license_note: str = "unknown",
    description: str = "",
    weights: bool = True,
    hashes: bool = True,
    derived_from: str | None = None,
    display_name: str | None = None,
) -> RefEntry:
    """An entry for the model at ``path``: architecture, tokenizer, hashes and fingerprint."""
    path = os.fspath(path)
    with open_checkpoint(path) as ckpt:
        file_hashes, tensor_hashes = checkpoint_sha256s(ckpt) if hashes else ({}, {})
        has_weights = weights and any(informative(info) for info in ckpt.tensors.values())
        stats = streamed_stats(ckpt, has_weights) if hashes or has_weights else {}
        constants = {name for name, st in stats.items() if st.constant}
        files = [
            {"name": display_name if display_name and len(ckpt.files) == 1 else os.path.basename(span.path),
             "size": span.size, "sha256": file_hashes[span.path]}
            for span in ckpt.files if span.path in file_hashes
        ]
        tensors = None
        if hashes:
            tensors = {
                name: {"shape": list(info.shape), "dtype": info.dtype, "sha256": tensor_hashes[name],
                       "constant": name in constants, "informative": informative(info) and name not in constants}
                for name, info in sorted(ckpt.tensors.items())
            } or None
        vocab = checkpoint_vocabulary(ckpt)
        return RefEntry(
            id=entry_id,
            family=family,
            description=description,
            license=license_note,
            provenance={
                "kind": "computed",
                "sources": [source] if source else [],
                "computed_by": {"tool": "provenance", "version": __version__, "how": "provenance.refdb.build_entry",
                                "format": ckpt.format},
                "source_files": files,
            },
            architecture=architecture_dict(ckpt, f"metadata of {files[0]['name'] if files else os.path.basename(path)}")
            if ckpt.architecture.n_embd or ckpt.architecture.arch else None,
            tokenizer=fingerprint_vocabulary(vocab) if vocab is not None else None,
            files=files,
            tensors=tensors,
            weights=build_fingerprint(ckpt, stats) if has_weights else None,
            derived_from=derived_from,
        )
