"""Which tensors carry the mark.

Default: every 2-D weight matrix inside the transformer blocks (attention q/k/v/output,
MLP gate/up/down, and whatever other 2-D ``blk.N.*.weight`` an architecture has). Left out:

* ``token_embd`` and ``output``: vocabulary edits (added tokens, trimmed vocabularies,
  re-tied heads) change or replace them, and a leaker can swap them for the public base
  model's copy at no cost to quality; they are ~4% of a 7B model, so keeping them out
  costs ~2% of z.
* norms and biases: 1-D, few weights (no power), and a relative perturbation of a norm
  scales whole activations.
* anything that is not floating point.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from provenance.formats.base import TensorInfo

FLOAT_DTYPES = {"F32", "F16", "BF16"}
EXCLUDED_ROLES = {"token_embd", "output", "rope_freqs"}

Selector = Callable[[TensorInfo], bool]


def default_selector(info: TensorInfo) -> bool:
    return (
        info.layer is not None
        and len(info.shape) == 2
        and info.n_rows > 1
        and info.row_length > 1
        and info.name.endswith(".weight")
        and info.role not in EXCLUDED_ROLES
        and "norm" not in (info.role or "")
    )


def names_selector(names: Iterable[str]) -> Selector:
    wanted = set(names)
    return lambda info: info.name in wanted


def markable(info: TensorInfo) -> bool:
    """Whether ``embed`` can write a marked copy of this tensor (plain float storage)."""
    return info.dtype.upper() in FLOAT_DTYPES
