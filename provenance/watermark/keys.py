"""Watermark keys: per-(secret, client, tensor) Gaussian streams, or keys read from a file.

Derivation (format ``provenance-wm-v1``), fixed so a key is the same on every machine
and every numpy/torch version:

* ``seed = SHA-256(b"provenance-wm-v1" || lp(secret) || lp(client) || lp(tensor))`` where
  ``lp(x)`` is ``len(x)`` as 8-byte little-endian followed by ``x`` (length prefixes make
  the concatenation unambiguous), client and tensor name in UTF-8, the tensor name the
  *canonical* (GGUF) one, so an HF copy and its GGUF conversion carry the same key.
* The first 16 bytes of ``seed`` are the 128-bit key of numpy's ``Philox4x64`` counter
  generator. Its raw 64-bit outputs are stable by numpy's documented policy (NEP 19) and
  random access is O(1): output ``j`` belongs to counter ``j // 4``.
* Element ``i`` of the tensor (canonical layout, row-major) comes from the Box-Muller pair
  ``(u_{2m}, u_{2m+1})`` with ``m = i // 2``: ``u = ((raw >> 11) + 0.5) * 2**-53`` lies
  strictly inside (0, 1), ``r = sqrt(-2 ln u_{2m})``, ``t = 2 pi u_{2m+1}``, element ``2m`` is
  ``r cos t`` and ``2m + 1`` is ``r sin t``. numpy's own ``standard_normal`` (ziggurat) is
  *not* promised stable across versions, which is why the transform is done here. The
  float64 transcendental functions may differ by an ulp between libm builds: that moves a
  z-score by ~1e-16, and the test vector is pinned at that tolerance.

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
import torch

from provenance.errors import ProvenanceError

KEY_FORMAT = "provenance-wm-v1"
MIN_SECRET_BYTES = 16


class WatermarkKeyError(ProvenanceError):
    """A secret or key file that cannot be used."""


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def key_seed(secret: bytes, client: str, tensor: str) -> bytes:
    """The 32-byte seed of one client's key for one (canonical) tensor."""
    return hashlib.sha256(KEY_FORMAT.encode() + _lp(secret) + _lp(client.encode("utf-8")) + _lp(tensor.encode("utf-8"))).digest()


def _uniforms(seed: bytes, first_raw: int, n_raw: int) -> torch.Tensor:
    """Raw Philox outputs ``[first_raw, first_raw + n_raw)`` mapped to float64 in (0, 1)."""
    key = np.frombuffer(seed[:16], dtype="<u8").astype(np.uint64)
    counter = np.zeros(4, dtype=np.uint64)
    counter[0] = first_raw // 4  # < 2**62 for any real tensor; higher words stay zero
    gen = np.random.Philox(key=key, counter=counter)
    skip = first_raw % 4
    raw = gen.random_raw(n_raw + skip)[skip:]
    raw >>= np.uint64(11)  # 53 significant bits: exact in float64, and now < 2**63
    u = torch.from_numpy(raw.view(np.int64)).to(torch.float64)
    return u.add_(0.5).mul_(2.0**-53)


def gaussian_stream(seed: bytes, start: int, count: int) -> np.ndarray:
    """Elements ``[start, start + count)`` of the Gaussian stream of ``seed`` (float64)."""
    if count <= 0:
        return np.zeros(0, dtype=np.float64)
    first_pair, last_pair = start // 2, (start + count + 1) // 2
    u = _uniforms(seed, 2 * first_pair, 2 * (last_pair - first_pair)).view(-1, 2)
    radius = torch.log(u[:, 0]).mul_(-2.0).sqrt_()
    theta = u[:, 1].mul(2.0 * np.pi)
    out = torch.empty((last_pair - first_pair, 2), dtype=torch.float64)
    torch.mul(radius, torch.cos(theta), out=out[:, 0])
    torch.mul(radius, torch.sin(theta), out=out[:, 1])
    offset = start - 2 * first_pair
    return out.view(-1)[offset : offset + count].numpy()


class KeySource(Protocol):
    """Where the key of one client (or one key file) comes from, tensor by tensor."""

    label: str

    def has(self, name: str) -> bool: ...

    def rows(self, name: str, shape: tuple[int, int], start: int, stop: int) -> np.ndarray:
        """Key rows ``[start, stop)`` of canonical tensor ``name`` viewed as ``shape``."""
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

    def rows(self, name: str, shape: tuple[int, int], start: int, stop: int) -> np.ndarray:
        n_cols = shape[1]
        flat = gaussian_stream(key_seed(self.secret, self.client, name), start * n_cols, (stop - start) * n_cols)
        return flat.reshape(stop - start, n_cols)


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
                    arrays[name] = value.astype(np.float64, copy=False)
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


def derived_keys(secret: bytes, clients: Iterable[str]) -> list[DerivedKey]:
    return [DerivedKey(secret, client) for client in clients]


def export_key_file(key: KeySource, shapes: dict[str, tuple[int, int]], path: str | os.PathLike[str]) -> None:
    """Write a key as an ``.npz`` of float32 arrays by canonical name (for third parties
    who must detect without learning the secret)."""
    arrays = {name: key.rows(name, shape, 0, shape[0]).astype(np.float32) for name, shape in shapes.items() if key.has(name)}
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
