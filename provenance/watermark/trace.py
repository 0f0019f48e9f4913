"""Traitor tracing: score every client's key, accuse only above a threshold fixed in advance.

Decision rule (fixed before looking at the data): client ``c`` is accused when any of its
statistics reaches ``z >= threshold`` (default 7). Each statistic is exactly N(0, 1) for
an innocent key, so with ``m = clients x statistics`` tests the probability that *any*
innocent client is accused is at most ``m * P(N(0,1) >= 7) = m * 1.28e-12`` (Bonferroni;
e.g. < 1.3e-8 for 10,000 clients and the three statistics). Holm-adjusted p-values are
reported beside the fixed rule. Several accused clients point to collusion (averaged or
mixed copies): every accused key is reported, with its per-tensor breakdown.

Sequential tracing (the default, :mod:`.sequential`) spends the same per-test level on an
always-valid test over a seeded random order of blocks and stops reading once every client
is accused or cleared: the bound above holds unchanged, a strong mark is named after a small
fraction of the model, and only a weak or absent one costs a full pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from provenance.errors import CheckpointError, ProvenanceError, input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.jsonsafe import read_json_file
from provenance.progress import ProgressCallback
from provenance.watermark.detect import ScoreResult, score_checkpoint
from provenance.watermark.keys import DerivedKey, FileKey, KeySource, read_secret
from provenance.watermark.options import TraceOptions
from provenance.watermark.result import AccusationRule, ClientScore, DecoyNull
from provenance.watermark.sequential import ACCUSED, SequentialRule
from provenance.watermark.stats import family_bound, holm, log10_p

REGISTRY_SCHEMA = "provenance.watermark-registry/1"


class RegistryError(ProvenanceError):
    """A client registry that cannot be used."""


def _inside(base: Path, name: Any, registry: Path) -> Path:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise RegistryError(f"{registry}: {name!r} is not a file name")
    path = (base / name).resolve()
    if base.resolve() not in path.parents:
        raise RegistryError(f"{registry}: {name!r} points outside the registry's directory")
    return path


def load_registry(path: str | os.PathLike[str], arch: object | None = None) -> list[KeySource]:
    """Keys of every client in a registry.

    * a JSON file ``{"schema": "provenance.watermark-registry/1", "secret_file": "owner.secret",
      "clients": ["acme", ...]}`` and/or ``"key_files": {"acme": "acme.npz", ...}`` (paths
      relative to the JSON file, never outside its directory);
    * a directory holding ``secret`` and ``clients.txt`` (one id per line), and/or ``*.npz``
      key files (client = file stem).
    """
    path = Path(path)
    keys: list[KeySource] = []
    if path.is_dir():
        if (path / "secret").is_file() and (path / "clients.txt").is_file():
            secret = read_secret(path / "secret")
            clients = [line.strip() for line in (path / "clients.txt").read_text("utf-8").splitlines()]
            keys += [DerivedKey(secret, c) for c in clients if c and not c.startswith("#")]
        keys += [FileKey.load(p, arch, label=p.stem) for p in sorted(path.glob("*.npz"))]
    else:
        try:  # strict JSON: a duplicated client or key-file entry is an error, not "last one wins"
            doc = read_json_file(str(path), "registry", max_bytes=16 * 1024 * 1024)
        except (OSError, CheckpointError) as exc:
            raise RegistryError(f"{path}: not a readable JSON registry ({exc})") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"{path}: a registry is a JSON object")
        base = path.parent
        if "clients" in doc:
            if not isinstance(doc.get("secret_file"), str) or not isinstance(doc["clients"], list):
                raise RegistryError(f"{path}: 'clients' needs a list of ids and a 'secret_file'")
            secret = read_secret(_inside(base, doc["secret_file"], path))
            keys += [DerivedKey(secret, str(c)) for c in doc["clients"]]
        for client, name in (doc.get("key_files") or {}).items():
            keys.append(FileKey.load(_inside(base, name, path), arch, label=str(client)))
    labels = [k.label for k in keys]
    if not keys:
        raise RegistryError(f"{path}: no clients")
    if len(set(labels)) != len(labels):
        raise RegistryError(f"{path}: duplicate client ids")
    return keys


def _registry_stamp(path: Path) -> tuple[tuple[object, ...], bool]:
    """Size and mtime of the registry and, for a directory, of each file in it (edits are seen),
    and whether it may hold key files (``.npz``), whose tensor names depend on the candidate's
    architecture; derived keys do not."""
    entries = sorted(path.iterdir()) if path.is_dir() else [path]
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in entries if p.is_file())
    if path.is_dir():
        return stamp, any(p.suffix == ".npz" for p in entries)
    return stamp, not path.is_file() or b"key_files" in path.read_bytes()


@lru_cache(maxsize=8)
def _load_registry_once(path: str, stamp: tuple[object, ...], arch: object | None) -> tuple[KeySource, ...]:
    return tuple(load_registry(path, arch))


def cached_registry(path: str | os.PathLike[str], arch: object | None = None) -> list[KeySource]:
    """:func:`load_registry`, read once per process while the registry's files are unchanged
    (and once per architecture when it holds key files): a worker scanning many models
    (``check``, ``scan``) reads the keys once, not per model. Scoring does not modify keys,
    so sharing them is safe."""
    resolved = Path(path).resolve()
    try:
        stamp, per_arch = _registry_stamp(resolved)
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the registry ({exc.strerror})") from None
    return list(_load_registry_once(str(resolved), stamp, arch if per_arch else None))


@dataclass(frozen=True)
class TraceResult:
    score: ScoreResult
    threshold_z: float
    accused: tuple[str, ...]
    rule_levels: SequentialRule | None = None

    @property
    def n_tests(self) -> int:
        return len(self.score.keys) * len(self.score.statistics)

    @property
    def collusion(self) -> bool:
        return len(self.accused) >= 2

    @property
    def rule(self) -> AccusationRule:
        levels = self.rule_levels
        return AccusationRule(self.threshold_z, log10_p(self.threshold_z), self.n_tests,
                              family_bound(self.n_tests, self.threshold_z),
                              sequential=bool(levels and levels.sequential),
                              sequential_share=levels.share if levels else 0.0,
                              full_pass_threshold_z=levels.full_pass_z if levels else self.threshold_z,
                              colluder_fraction=levels.colluder_fraction if levels and levels.sequential else None)

    @property
    def decoys(self) -> dict[str, DecoyNull]:
        return self.score.decoy_summary()

    def clients(self, per_tensor: bool = False) -> list[ClientScore]:
        """Every key, the strongest first, with Holm-adjusted p-values; ``per_tensor`` adds
        the per-tensor z of accused clients."""
        scores = {k.label: k.scores(self.rule_levels, self.score.complete) for k in self.score.keys}
        tests = [(label, s, v.p_value) for label, stats in scores.items() for s, v in stats.items()]
        adjusted = holm([p for _, _, p in tests]) if tests else []
        holm_by = {(label, s): p for (label, s, _), p in zip(tests, adjusted, strict=True)}
        out = []
        for key in sorted(self.score.keys, key=lambda k: -k.best()[1]):
            accused = key.label in self.accused
            stats = {s: replace(v, holm_p=holm_by.get((key.label, s))) for s, v in scores[key.label].items()}
            out.append(ClientScore(key.label, accused, stats, key.per_tensor_z() if per_tensor and accused else None,
                                   key.decision, key.decided_after))
        return out

    def to_dict(self, per_tensor: bool = True) -> dict[str, Any]:
        return {
            "schema": "provenance.watermark-trace/1",
            "candidate": self.score.candidate,
            "reference": self.score.reference,
            "rule": self.rule.to_dict(),
            "accused": list(self.accused),
            "collusion_suspected": self.collusion,
            "n_weights": self.score.n_weights,
            "weights_read": self.score.weights_read,
            "blocks_read": self.score.blocks_read,
            "blocks_total": self.score.blocks_total,
            "decoy_weights": self.score.decoy_weights,
            "n_tensors": len(self.score.tensors),
            "n_grid_flips": self.score.n_flips,
            "grid_precision": self.score.precision,
            "realignment": self.score.realignment,
            "decoys": {s: d.to_dict() for s, d in self.decoys.items()},
            "clients": [c.to_dict() for c in self.clients(per_tensor)],
            "warnings": self.score.warnings,
        }


@input_boundary
def trace(
    candidate: str | os.PathLike[str],
    keys: list[KeySource],
    reference: str | os.PathLike[str] | None = None,
    options: TraceOptions | None = None,
    progress: ProgressCallback | None = None,
) -> TraceResult:
    """Score all ``keys`` on ``candidate`` and apply the accusation rule fixed in advance
    (sequential unless ``options.sequential`` is off); ``progress`` is told the bytes read."""
    opts = options or TraceOptions()
    levels = SequentialRule.for_threshold(opts.threshold_z, opts.sequential, opts.colluder_fraction)
    task = "watermark detect" if len(keys) == 1 else "watermark trace"
    score = score_checkpoint(candidate, keys, reference, opts, rule=levels, progress=progress, task=task)
    accused = tuple(k.label for k in score.keys if k.decision == ACCUSED)
    return TraceResult(score, opts.threshold_z, accused, levels)


def candidate_arch(path: str | os.PathLike[str]) -> object:
    """The candidate's architecture record (maps HF-named key files to canonical names)."""
    with open_checkpoint(path) as ckpt:
        return ckpt.architecture
