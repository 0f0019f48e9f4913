"""Strict JSON for untrusted headers and index files: size caps, no duplicate keys."""
from __future__ import annotations

import gc
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from provenance.errors import MalformedCheckpoint


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # built in C: a 262k-token vocabulary object costs no Python loop
    if len(out) != len(pairs):  # fewer keys than pairs: a key came twice; name the first one
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a parse builds containers (and while the caller
    reduces them): a parsed document holds no cycles, and a 33 MB tokenizer.json (515k merge
    lists) otherwise triggers collections that walk every object made so far, again and
    again (half of its parse-to-vocabulary time, measured). Nests: the outer one restores."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def loads_strict(data: bytes, path: str, field: str, offset: int = 0) -> Any:
    """Parse JSON, rejecting duplicate keys and NaN/Infinity."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedCheckpoint(path, "JSON is not valid UTF-8", field=field, offset=offset + exc.start) from None
    # Deep nesting ends in RecursionError inside the C scanner, caught below.
    try:
        with collector_paused():
            return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        raise MalformedCheckpoint(path, f"duplicate JSON key {exc.args[0]!r}", field=field, offset=offset) from None
    except (ValueError, RecursionError) as exc:
        position = getattr(exc, "pos", None)
        where = offset + position if isinstance(position, int) else offset
        message = getattr(exc, "msg", str(exc))
        raise MalformedCheckpoint(path, f"invalid JSON: {message}", field=field, offset=where) from None


def read_json_file(path: str, field: str, max_bytes: int = 64 * 1024 * 1024) -> Any:
    """A JSON file (regular files only, size capped), parsed strictly; validate what is used
    with :func:`provenance.formats.schema.read_document` where a schema exists."""
    from provenance.formats.files import read_capped

    return loads_strict(read_capped(path, field, max_bytes), path, field)


def finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def text_offset(raw: bytes, value: Any, key: str | None = None, start: int = 0) -> int:
    """Where to look for a bad JSON field in ``raw``: the first occurrence, at or after ``start``
    (the offset of its enclosing section), of the value's JSON text, else of its key, else ``start``."""
    at = -1
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        at = raw.find(json.dumps(value).encode(), start)
    if at < 0 and key is not None:
        at = raw.find(json.dumps(key).encode(), start)
    return at if at >= 0 else start
