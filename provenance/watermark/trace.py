"""Traitor tracing: score every client's key, accuse only above a threshold fixed in advance.

Decision rule (fixed before looking at the data): client ``c`` is accused when any of its
statistics reaches ``z >= threshold`` (default 7). Each statistic is exactly N(0, 1) for
an innocent key, so with ``m = clients x statistics`` tests the probability that *any*
innocent client is accused is at most ``m * P(N(0,1) >= 7) = m * 1.28e-12`` (Bonferroni;
e.g. < 1.3e-8 for 10,000 clients and the three statistics). Holm-adjusted p-values are
reported beside the fixed rule. Several accused clients point to collusion (averaged or
mixed copies): every accused key is reported, with its per-tensor breakdown.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from provenance.errors import CheckpointError, ProvenanceError, input_boundary
from provenance.formats import open_checkpoint
from provenance.formats.jsonsafe import read_json_file
from provenance.watermark.detect import ScoreResult, score_checkpoint
from provenance.watermark.keys import DerivedKey, FileKey, KeySource, read_secret
from provenance.watermark.options import TraceOptions
from provenance.watermark.result import AccusationRule, ClientScore, DecoyNull
from provenance.watermark.stats import family_bound, holm, log10_p, p_value

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


@dataclass(frozen=True)
class TraceResult:
    score: ScoreResult
    threshold_z: float
    accused: tuple[str, ...]

    @property
    def n_tests(self) -> int:
        return len(self.score.keys) * len(self.score.statistics)

    @property
    def collusion(self) -> bool:
        return len(self.accused) >= 2

    @property
    def rule(self) -> AccusationRule:
        return AccusationRule(self.threshold_z, log10_p(self.threshold_z), self.n_tests,
                              family_bound(self.n_tests, self.threshold_z))

    @property
    def decoys(self) -> dict[str, DecoyNull]:
        return self.score.decoy_summary()

    def clients(self, per_tensor: bool = False) -> list[ClientScore]:
        """Every key, the strongest first, with Holm-adjusted p-values; ``per_tensor`` adds
        the per-tensor z of accused clients."""
        tests = [(k.label, s, acc.z) for k in self.score.keys for s, acc in k.totals.items() if acc.q > 0]
        adjusted = holm([p_value(z) for _, _, z in tests]) if tests else []
        holm_by = {(label, s): p for (label, s, _), p in zip(tests, adjusted, strict=True)}
        out = []
        for key in sorted(self.score.keys, key=lambda k: -k.best()[1]):
            accused = key.label in self.accused
            stats = {s: replace(v, holm_p=holm_by.get((key.label, s))) for s, v in key.scores().items()}
            out.append(ClientScore(key.label, accused, stats, key.per_tensor_z() if per_tensor and accused else None))
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
) -> TraceResult:
    """Score all ``keys`` on ``candidate`` and apply the fixed accusation rule."""
    opts = options or TraceOptions()
    score = score_checkpoint(candidate, keys, reference, opts)
    accused = tuple(k.label for k in score.keys if k.best()[1] >= opts.threshold_z)
    return TraceResult(score, opts.threshold_z, accused)


def candidate_arch(path: str | os.PathLike[str]) -> object:
    """The candidate's architecture record (maps HF-named key files to canonical names)."""
    with open_checkpoint(path) as ckpt:
        return ckpt.architecture
