"""One schema layer for every JSON document (and JSON-like header) an input can carry.

A model folder's JSON is as hostile as its binary headers: ``config.json``, the
safetensors header and ``model.safetensors.index.json``, ``tokenizer.json``,
``tokenizer_config.json``, adapter and quantization configs. Each is checked here against
a declarative schema (types, ranges, sizes, lengths) *before* a reader uses a value, so a
list where a string belongs or ``num_attention_heads: -1`` is one clean
:class:`~provenance.errors.MalformedCheckpoint` naming the file, the JSON path of the field
and the offset of its key, never a ``TypeError`` deep in an analysis. The schemas of the
documents themselves are in :mod:`provenance.formats.documents`.

A schema is built from a few node types: :class:`Int`, :class:`Num`, :class:`Str`,
:class:`Bool`, :data:`NULL`, :class:`ListOf`, :class:`MapOf`, :class:`Obj`, :class:`OneOf`,
:data:`ANY`. Unknown object keys are ignored unless an :class:`Obj` forbids them (HF configs
carry many keys nobody reads; a safetensors entry may carry exactly three). Long lists of
plain items (a 262k-token vocabulary, 515k merges) are checked by one tight pass first and
walked item by item only to name the one at fault.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

from provenance.errors import MalformedCheckpoint

INT64_MAX = (1 << 63) - 1


class SchemaViolation(Exception):
    """Raised inside the walk; turned into a MalformedCheckpoint by :func:`validate`."""

    def __init__(self, where: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.where, self.message = where, message


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__)


class Spec:
    """A schema node: ``check`` returns the value (validated) or raises :class:`SchemaViolation`."""

    description = "a value"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        raise NotImplementedError

    def fast(self, values: list[Any]) -> bool:
        """Whether every one of ``values`` passes; one tight pass (False may be a false alarm:
        the caller then checks item by item, which names the bad one)."""
        return False

    def fail(self, value: Any, where: tuple[str | int, ...], why: str | None = None) -> SchemaViolation:
        shown = json.dumps(value)[:40] if isinstance(value, (str, int, float, bool)) or value is None else _kind(value)
        return SchemaViolation(where, why or f"expected {self.description}, found {shown}")


@dataclass(frozen=True)
class Int(Spec):
    lo: int = 0
    hi: int = INT64_MAX

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"an integer in [{self.lo}, {self.hi}]"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if type(value) is not int or not self.lo <= value <= self.hi:
            raise self.fail(value, where)
        return value

    def fast(self, values: list[Any]) -> bool:
        # C loops (map, set, min, max), no Python bytecode per item: a vocabulary has 262k ids.
        return set(map(type, values)) <= {int} and (not values or (self.lo <= min(values) and max(values) <= self.hi))


@dataclass(frozen=True)
class Num(Spec):
    """A finite number (strict JSON has no NaN or infinity) in ``[lo, hi]``; integers allowed."""

    lo: float = -1e308
    hi: float = 1e308

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"a number in [{self.lo:g}, {self.hi:g}]"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if type(value) not in (int, float) or not self.lo <= value <= self.hi:
            raise self.fail(value, where)
        return value

    def fast(self, values: list[Any]) -> bool:
        # No NaN here (strict JSON refuses it), so min and max bound every value.
        return set(map(type, values)) <= {int, float} and (not values or (self.lo <= min(values) and max(values) <= self.hi))


@dataclass(frozen=True)
class Str(Spec):
    max_bytes: int = 65536
    """UTF-8 length cap."""
    choices: frozenset[str] | None = None

    @property
    def description(self) -> str:  # type: ignore[override]
        if self.choices is not None:
            return "one of " + ", ".join(sorted(self.choices))
        return f"a string of at most {self.max_bytes} bytes"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if type(value) is not str:
            raise self.fail(value, where)
        if len(value) * 4 > self.max_bytes and len(value.encode("utf-8", "surrogatepass")) > self.max_bytes:
            raise self.fail(value, where, f"string of {len(value.encode('utf-8', 'surrogatepass'))} bytes exceeds "
                                          f"the cap of {self.max_bytes}")
        if self.choices is not None and value not in self.choices:
            raise self.fail(value, where)
        return value

    def fast(self, values: list[Any]) -> bool:
        chars = self.max_bytes // 4  # a character is at most 4 UTF-8 bytes: no encoding needed below this
        if values and type(values[0]) is not str:  # not a list of strings (a OneOf's other option): no pass over it
            return False
        return self.choices is None and set(map(type, values)) <= {str} and max(map(len, values), default=0) <= chars


@dataclass(frozen=True)
class _Bool(Spec):
    description = "true or false"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if type(value) is not bool:
            raise self.fail(value, where)
        return value

    def fast(self, values: list[Any]) -> bool:
        return all(type(v) is bool for v in values)


@dataclass(frozen=True)
class _Null(Spec):
    description = "null"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if value is not None:
            raise self.fail(value, where)
        return value

    def fast(self, values: list[Any]) -> bool:
        return all(v is None for v in values)


@dataclass(frozen=True)
class _Anything(Spec):
    description = "any JSON value"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        return value

    def fast(self, values: list[Any]) -> bool:
        return True


BOOL, NULL, ANY = _Bool(), _Null(), _Anything()


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    max_items: int
    min_items: int = 0

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"a list of {self.min_items}..{self.max_items} items, each {self.item.description}"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if type(value) is not list:
            raise self.fail(value, where)
        if not self.min_items <= len(value) <= self.max_items:
            raise self.fail(value, where, f"{len(value)} items, expected {self.min_items}..{self.max_items}")
        if not self.item.fast(value):
            for i, item in enumerate(value):
                self.item.check(item, (*where, i))
        return value


@dataclass(frozen=True)
class Pair(Spec):
    """A list of exactly two items of the given kinds (``data_offsets``, a ``[left, right]`` merge)."""

    first: Spec
    second: Spec

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"[{self.first.description}, {self.second.description}]"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if type(value) is not list or len(value) != 2:
            raise self.fail(value, where)
        self.first.check(value[0], (*where, 0))
        self.second.check(value[1], (*where, 1))
        return value

    def fast(self, values: list[Any]) -> bool:
        if not (set(map(type, values)) <= {list} and set(map(len, values)) <= {2}):
            return False
        if self.first == self.second:  # one check over both halves: 515k merge pairs are 1M strings, no split
            return self.first.fast(list(chain.from_iterable(values)))
        firsts, seconds = zip(*values, strict=True) if values else ((), ())
        return self.first.fast(list(firsts)) and self.second.fast(list(seconds))


@dataclass(frozen=True)
class MapOf(Spec):
    """An object with any keys (``key``) mapping to values (``value``), at most ``max_items``."""

    value: Spec
    max_items: int
    key: Str = Str(4096)

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"an object of at most {self.max_items} entries, each {self.value.description}"

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if type(value) is not dict:
            raise self.fail(value, where)
        if len(value) > self.max_items:
            raise self.fail(value, where, f"{len(value)} entries exceed the cap of {self.max_items}")
        keys = list(value)
        if not self.key.fast(keys):
            for key in keys:
                self.key.check(key, (*where, key))
        values = list(value.values())
        if not self.value.fast(values):
            for key, item in zip(keys, values, strict=True):
                self.value.check(item, (*where, key))
        return value


@dataclass(frozen=True)
class Obj(Spec):
    """An object with known ``fields``; every other key is checked against ``others`` (any
    value by default), or refused when ``others`` is None."""

    fields: Mapping[str, Spec]
    required: frozenset[str] = field(default_factory=frozenset)
    others: Spec | None = ANY
    max_keys: int = 1 << 16

    @property
    def description(self) -> str:  # type: ignore[override]
        return "an object" + (f" with {', '.join(sorted(self.required))}" if self.required else "")

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        if type(value) is not dict:
            raise self.fail(value, where)
        if len(value) > self.max_keys:
            raise self.fail(value, where, f"{len(value)} keys exceed the cap of {self.max_keys}")
        missing = self.required - value.keys()
        if missing:
            raise SchemaViolation((*where, min(missing)), "required, missing")
        fields, others = self.fields, self.others
        for key, item in value.items():
            spec = fields.get(key, others)
            if spec is None:
                raise SchemaViolation((*where, key), f"unexpected key (expected only {', '.join(sorted(fields))})")
            spec.check(item, (*where, key))
        return value

    def fast(self, values: list[Any]) -> bool:
        # a list of small objects (a large vocabulary's ~6,000 added tokens): each field's
        # values gathered by C loops and checked in one pass, not one walk per object
        if not set(map(type, values)) <= {dict}:
            return False
        if self.others is not None and self.others is not ANY:
            return False
        if max(map(len, values), default=0) > self.max_keys:
            return False
        if self.others is None and not set().union(*map(dict.keys, values)) <= self.fields.keys():
            return False
        for key, spec in self.fields.items():
            found = list(map(dict.get, values, repeat(key), repeat(_ABSENT)))
            present = [item for item in found if item is not _ABSENT]
            if (key in self.required and len(present) != len(values)) or not spec.fast(present):
                return False
        return True


_ABSENT = object()
"""A key missing from an object (``None`` is JSON's null)."""


@dataclass(frozen=True)
class OneOf(Spec):
    options: tuple[Spec, ...]

    @property
    def description(self) -> str:  # type: ignore[override]
        return " or ".join(o.description for o in self.options)

    def check(self, value: Any, where: tuple[str | int, ...]) -> Any:
        failures = []
        for option in self.options:
            try:
                return option.check(value, where)
            except SchemaViolation as exc:
                failures.append(exc)
        # The option that got deepest into the value is the one it meant to be (a list of
        # [token, score] with one bad score): name that field, not only "one of ...".
        deepest = max(failures, key=lambda exc: len(exc.where))
        raise deepest if len(deepest.where) > len(where) else self.fail(value, where)

    def fast(self, values: list[Any]) -> bool:
        # Lists are nearly always homogeneous: one option passing them all is the fast case.
        return any(option.fast(values) for option in self.options)


def optional(spec: Spec) -> OneOf:
    """``spec`` or ``null`` (HF configs write ``null`` for unset fields)."""
    return OneOf((spec, NULL))


def field_path(where: tuple[str | int, ...]) -> str:
    """``('model', 'vocab', 3)`` -> ``model.vocab[3]`` (keys that are not identifiers quoted)."""
    out = ""
    for part in where:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)[:80]}]"
    return out


def key_offset(raw: bytes, where: tuple[str | int, ...], base: int = 0) -> int | None:
    """Byte offset of the innermost object key of ``where`` as JSON text in ``raw`` (its first
    occurrence: where to look with a hex editor), else of the nearest enclosing key."""
    for part in reversed(where):
        if isinstance(part, str):
            at = raw.find(json.dumps(part).encode("utf-8"))
            if at < 0:
                at = raw.find(json.dumps(part, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if at >= 0:
                return base + at
    return base if where == () else None


def validate(value: Any, spec: Spec, path: str, document: str, *, raw: bytes | None = None, base_offset: int = 0,
             where: tuple[str | int, ...] = ()) -> Any:
    """``value`` checked against ``spec``; a violation raises :class:`MalformedCheckpoint` with
    ``path``, the field (the JSON path, or ``document`` for the whole) and the offset: of the key in ``raw``
    (the document's bytes, which start at ``base_offset`` in the file), or ``base_offset``
    itself for a value read from a binary header. ``where``: the value's own path in the
    document, when it is a part of one."""
    try:
        return spec.check(value, where)
    except SchemaViolation as exc:
        offset = key_offset(raw, exc.where, base_offset) if raw is not None else base_offset or None
        raise MalformedCheckpoint(path, exc.message, field=field_path(exc.where) or document, offset=offset) from None


def parse_document(raw: bytes, spec: Spec, path: str, document: str, base_offset: int = 0) -> Any:
    """Strict JSON (:func:`provenance.formats.jsonsafe.loads_strict`) validated against ``spec``."""
    from provenance.formats.jsonsafe import loads_strict

    return validate(loads_strict(raw, path, document, offset=base_offset), spec, path, document, raw=raw,
                    base_offset=base_offset)


def read_document(path: str, spec: Spec, document: str, max_bytes: int = 64 * 1024 * 1024) -> Any:
    """A JSON file of a model input (regular files only, size capped), parsed and validated."""
    from provenance.formats.files import read_capped

    return parse_document(read_capped(path, document, max_bytes), spec, path, document)
