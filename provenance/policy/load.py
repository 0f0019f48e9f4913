"""Policy files (TOML), validated strictly: unknown keys are errors, not silently ignored.

Example (docs/ci.md has the full reference)::

    version = 1
    [format]
    allow = ["gguf", "gguf-split", "safetensors", "safetensors-sharded", "hf-directory"]
    [metadata]
    require = ["general.license"]
    require_base_model = true
    [[forbid_copy]]
    reference = "refs/llama-2-7b"     # a checkpoint path (relative to the policy file)
    min_identical_fraction = 0.5
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provenance.errors import UsageProblem
from provenance.formats.locators import is_locator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNOWN_FORMATS = {"gguf", "gguf-split", "safetensors", "safetensors-sharded", "hf-directory", "peft-adapter", "llama2c"}


class PolicyError(UsageProblem):
    """The policy file itself is invalid (a usage problem, not a finding)."""


@dataclass(frozen=True)
class ForbiddenCopy:
    reference: str
    min_identical_fraction: float = 0.5
    label: str = ""


@dataclass(frozen=True)
class Policy:
    path: str
    allow_formats: frozenset[str] = frozenset(KNOWN_FORMATS - {"llama2c"})
    max_file_bytes: int | None = None
    require_claims: tuple[str, ...] = ()
    require_base_model: bool = False
    forbid_copies: tuple[ForbiddenCopy, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    """Sections owned by other analyses (lineage, watermark), validated by them."""


_TOP_KEYS = {"version", "format", "metadata", "forbid_copy", "lineage", "watermark"}


def _expect(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise PolicyError(f"{path}: {message}")


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: invalid TOML: {exc}") from None
    _expect(data.get("version") == 1, path, "policy needs `version = 1`")
    unknown = set(data) - _TOP_KEYS
    _expect(not unknown, path, f"unknown policy sections {sorted(unknown)}")

    fmt = data.get("format", {})
    _expect(isinstance(fmt, dict) and set(fmt) <= {"allow", "max_file_bytes"}, path, "[format] takes allow, max_file_bytes")
    allow = fmt.get("allow", sorted(KNOWN_FORMATS - {"llama2c"}))
    _expect(isinstance(allow, list) and set(allow) <= KNOWN_FORMATS, path, f"[format] allow must list formats from {sorted(KNOWN_FORMATS)}")
    max_bytes = fmt.get("max_file_bytes")
    _expect(max_bytes is None or (isinstance(max_bytes, int) and max_bytes > 0), path, "max_file_bytes must be a positive integer")

    meta = data.get("metadata", {})
    _expect(isinstance(meta, dict) and set(meta) <= {"require", "require_base_model"}, path, "[metadata] takes require, require_base_model")
    require = meta.get("require", [])
    _expect(isinstance(require, list) and all(isinstance(k, str) for k in require), path, "[metadata] require must be a list of keys")

    copies = []
    for i, entry in enumerate(data.get("forbid_copy", [])):
        _expect(isinstance(entry, dict) and "reference" in entry and set(entry) <= {"reference", "min_identical_fraction", "label"},
                path, f"[[forbid_copy]] #{i} takes reference, min_identical_fraction, label")
        fraction = entry.get("min_identical_fraction", 0.5)
        _expect(isinstance(fraction, (int, float)) and 0 < fraction <= 1, path, "min_identical_fraction must be in (0, 1]")
        reference = str(entry["reference"])
        if not is_locator(reference) and not Path(reference).is_absolute():
            reference = str(path.parent / reference)
        copies.append(ForbiddenCopy(reference, float(fraction), str(entry.get("label", entry["reference"]))))

    policy = Policy(
        path=str(path),
        allow_formats=frozenset(allow),
        max_file_bytes=max_bytes,
        require_claims=tuple(require),
        require_base_model=bool(meta.get("require_base_model", False)),
        forbid_copies=tuple(copies),
        extra={k: data[k] for k in ("lineage", "watermark") if k in data},
    )
    validate_sections(policy)
    return policy


_LINEAGE_KEYS = {"references", "declared_base_must_match", "declared_relation_must_match", "require_known_base"}
_WATERMARK_KEYS = {"registry", "reference", "require", "forbid"}


def resolve_path(policy: Policy, value: str) -> str:
    """A path from the policy file, relative to the policy file's directory; a model store name
    (``hf:``, ``ollama:``) as it is."""
    if is_locator(value):
        return value
    path = Path(value)
    return str(path if path.is_absolute() else Path(policy.path).parent / path)


def validate_sections(policy: Policy) -> None:
    """Raise :class:`PolicyError` on unknown keys or wrong types in [lineage] / [watermark]."""
    lineage = policy.extra.get("lineage", {})
    if lineage:
        if not isinstance(lineage, dict) or set(lineage) - _LINEAGE_KEYS:
            raise PolicyError(f"{policy.path}: [lineage] takes {sorted(_LINEAGE_KEYS)}")
        refs = lineage.get("references", {})
        if not isinstance(refs, dict) or not all(isinstance(v, str) for v in refs.values()):
            raise PolicyError(f"{policy.path}: [lineage] references must map names to checkpoint paths")
        flags = ("declared_base_must_match", "declared_relation_must_match", "require_known_base")
        if not all(isinstance(lineage.get(key, False), bool) for key in flags):
            raise PolicyError(f"{policy.path}: [lineage] {', '.join(flags)} are true or false")
    watermark = policy.extra.get("watermark", {})
    if watermark:
        if not isinstance(watermark, dict) or set(watermark) - _WATERMARK_KEYS or not isinstance(watermark.get("registry"), str):
            raise PolicyError(f"{policy.path}: [watermark] needs registry and takes {sorted(_WATERMARK_KEYS)}")
        for key in ("require", "forbid"):
            if not isinstance(watermark.get(key, []), list):
                raise PolicyError(f"{policy.path}: [watermark] {key} must be a list of client ids")
