"""Watermark keys: per-(secret, client, tensor) Gaussian streams, or keys read from a file.

Derivation (format ``provenance-wm-v2``; docs/watermark.md, "Keys"), fixed so a key is the
same bits on every machine:

* ``seed = SHA-256(b"provenance-wm-v2" || lp(secret) || lp(client) || lp(tensor))`` where
  ``lp(x)`` is ``len(x)`` as 8-byte little-endian followed by ``x`` (length prefixes make
  the concatenation unambiguous), client and tensor name in UTF-8, the tensor name the
  *canonical* (GGUF) one, so an HF copy and its GGUF conversion carry the same key.
* The first 16 bytes of ``seed``, read as four little-endian 32-bit words, are the Philox
  key (words 0, 1) and the high counter words (2, 3) of :mod:`.keygen`'s generator; element
  ``i`` of the tensor (canonical layout, row-major) is a float32 N(0, 1) value computed from
  counter ``i // 4`` alone, so any row range is generated without the rows before it.

``v1`` keys (numpy's Philox4x64 and a float64 Box-Muller through libm) were replaced by this
generator because generating them cost more than reading the model; the two formats give
unrelated keys, so a copy marked with a ``v1`` key is not found with a ``v2`` one.

Gaussian, not +-1, keys: the null of the correlation statistic is then exactly N(0, 1)
given the candidate, and averaging or taking midpoints of several copies cannot cancel a
Gaussian mark the way it cancels +-1 marks that disagree in sign.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from provenance.errors import ProvenanceError
from provenance.watermark.keygen import fill_gaussian, gaussian_dots

KEY_FORMAT = "provenance-wm-v2"
MIN_SECRET_BYTES = 16


class WatermarkKeyError(ProvenanceError):
    """A secret or key file that cannot be used."""


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def key_seed(secret: bytes, client: str, tensor: str) -> bytes:
    """The 32-byte seed of one client's key for one (canonical) tensor."""
    return hashlib.sha256(KEY_FORMAT.encode() + _lp(secret) + _lp(client.encode("utf-8")) + _lp(tensor.encode("utf-8"))).digest()


def key_words(seed: bytes) -> np.ndarray:
    """The generator's four 32-bit words (Philox key, counter high words) of a seed."""
    return np.frombuffer(seed[:16], dtype="<u4").astype(np.uint32)


def gaussian_stream(seed: bytes, start: int, count: int) -> np.ndarray:
    """Elements ``[start, start + count)`` of the Gaussian stream of ``seed`` (float32)."""
    out = np.empty(max(0, count), dtype=np.float32)
    if count > 0:
        fill_gaussian(key_words(seed), start, out)
    return out


class KeySource(Protocol):
    """Where the key of one client (or one key file) comes from, tensor by tensor."""

    label: str

    def has(self, name: str) -> bool: ...

    def rows(self, name: str, shape: tuple[int, int], start: int, stop: int) -> np.ndarray:
        """Key rows ``[start, stop)`` of canonical tensor ``name`` viewed as ``shape`` (float32)."""
        ...

    def dots(self, name: str, shape: tuple[int, int], first: int, ys: np.ndarray, lo: int, hi: int,
             out: np.ndarray) -> None:
        """``out[s] += sum(key[first + j] * ys[s, j] for lo <= j < hi)`` for each row of ``ys``
        (C-contiguous float32 ``(statistics, n)``; ``first``: the key element of column 0,
        counted in the tensor's canonical flat order; ``out`` float64)."""
        ...


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """A secret file's bytes, trailing whitespace removed (editors add a newline)."""
    data = Path(path).read_bytes().rstrip(b" \t\r\n")
    if len(data) < MIN_SECRET_BYTES:
        raise WatermarkKeyError(f"{path}: a secret needs at least {MIN_SECRET_BYTES} bytes, got {len(data)}")
    return data


@dataclass
class DerivedKey:
    """A client's key derived from the owner's secret (see the module docstring)."""

    secret: bytes = field(repr=False)
    client: str
    label: str = ""

    def __post_init__(self) -> None:
        if not self.client:
            raise WatermarkKeyError("client id must not be empty")
        self.label = self.label or self.client

    def has(self, name: str) -> bool:
        return True

    def words(self, name: str) -> np.ndarray:
        """The generator words of tensor ``name``'s key."""
        return key_words(key_seed(self.secret, self.client, name))

    def rows(self, name: str, shape: tuple[int, int], start: int, stop: int) -> np.ndarray:
        n_cols = shape[1]
        flat = gaussian_stream(key_seed(self.secret, self.client, name), start * n_cols, (stop - start) * n_cols)
        return flat.reshape(stop - start, n_cols)

    def dots(self, name: str, shape: tuple[int, int], first: int, ys: np.ndarray, lo: int, hi: int,
             out: np.ndarray) -> None:
        # generated and multiplied in one compiled pass: the key is never stored
        gaussian_dots(self.words(name), first, ys, lo, hi, out)


@dataclass
class FileKey:
    """Explicit keys: an ``.npz`` of per-tensor float arrays named by GGUF or HF names.

    HF-named arrays are mapped to canonical names with the candidate's architecture, and
    llama q/k arrays are row-permuted to llama.cpp's order exactly as the readers do.
    """

    arrays: dict[str, np.ndarray]
    label: str

    @classmethod
    def load(cls, path: str | os.PathLike[str], arch: object | None = None, label: str | None = None) -> FileKey:
        from provenance.names.canonical import hf_to_canonical, layer_and_role
        from provenance.names.qk_permute import hf_to_gguf_rows

        arrays: dict[str, np.ndarray] = {}
        try:
            with np.load(path, allow_pickle=False) as npz:  # never unpickle a key file
                for stored in npz.files:
                    value = np.asarray(npz[stored])
                    if value.dtype.kind != "f":
                        raise WatermarkKeyError(f"{path}: key {stored!r} is {value.dtype}, not floating point")
                    name = stored
                    canonical = hf_to_canonical(stored, getattr(arch, "arch", None), getattr(arch, "n_layer", None))
                    if canonical is not None and canonical != stored:
                        name = canonical
                        role = layer_and_role(canonical)[1]
                        heads = {"attn_q": getattr(arch, "n_head", None), "attn_k": getattr(arch, "n_head_kv", None)}.get(role)
                        if heads and getattr(arch, "qk_permuted_in_gguf", False) and value.ndim == 2:
                            value = hf_to_gguf_rows(value, heads)
                    if name in arrays:
                        raise WatermarkKeyError(f"{path}: two keys map to tensor {name!r}")
                    arrays[name] = value.astype(np.float32, copy=False)
        except (OSError, ValueError) as exc:
            raise WatermarkKeyError(f"{path}: not a readable .npz key file ({exc})") from None
        return cls(arrays, label or os.path.basename(os.fspath(path)))

    def has(self, name: str) -> bool:
        return name in self.arrays

    def rows(self, name: str, shape: tuple[int, int], start: int, stop: int) -> np.ndarray:
        value = self.arrays[name]
        if value.size != shape[0] * shape[1]:
            raise WatermarkKeyError(f"{self.label}: key {name!r} has {value.size} elements, the tensor {shape[0] * shape[1]}")
        return value.reshape(shape)[start:stop]

    def dots(self, name: str, shape: tuple[int, int], first: int, ys: np.ndarray, lo: int, hi: int,
             out: np.ndarray) -> None:
        value = self.arrays[name]
        if value.size != shape[0] * shape[1]:
            raise WatermarkKeyError(f"{self.label}: key {name!r} has {value.size} elements, the tensor {shape[0] * shape[1]}")
        key = value.reshape(-1)[first + lo:first + hi].astype(np.float64)
        out += ys[:, lo:hi].astype(np.float64) @ key


def derived_keys(secret: bytes, clients: Iterable[str]) -> list[DerivedKey]:
    return [DerivedKey(secret, client) for client in clients]


def export_key_file(key: KeySource, shapes: dict[str, tuple[int, int]], path: str | os.PathLike[str]) -> None:
    """Write a key as an ``.npz`` of float32 arrays by canonical name (for third parties
    who must detect without learning the secret)."""
    arrays = {name: key.rows(name, shape, 0, shape[0]).astype(np.float32) for name, shape in shapes.items() if key.has(name)}
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
