"""Model cards: the YAML front matter of a model folder's ``README.md``, read as claims.

The Hub builds its model tree from four fields (docs/lineage.md, "Claims"): ``base_model`` (one
or several repo ids), ``base_model_relation`` (``adapter``, ``merge``, ``quantized`` or
``finetune``), ``license`` and ``datasets``. They are what the publisher says, never evidence;
:mod:`provenance.compare.claims` sets them beside the weights.

The card is hostile input. Only a bounded front matter is read (the block between the first two
``---`` lines, at most :data:`MAX_FRONT_MATTER_BYTES`), its YAML event stream is checked before
anything is built (anchors and aliases refused, so no "billion laughs" expansion or cyclic
structure can exist; at most :data:`MAX_EVENTS` events, :data:`MAX_DEPTH` levels), then loaded
with ``yaml.safe_load`` (no Python objects, ever); the four fields are type-checked and any
other key is ignored.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from provenance.errors import LimitExceeded, MalformedCheckpoint
from provenance.formats.files import read_head

CARD_NAME = "README.md"
MAX_FRONT_MATTER_BYTES = 256 * 1024
"""Real cards' metadata is a few KiB (a long ``model-index`` of evaluation results: tens)."""
MAX_EVENTS = 50_000
MAX_DEPTH = 32
MAX_NAMES = 1024
MAX_NAME_CHARS = 4096
#: the Hub's model-tree relations (huggingface.co/docs/hub/model-cards, "Specifying a base model")
RELATIONS = ("adapter", "merge", "quantized", "finetune")
_DELIMITER = "---"


@dataclass(frozen=True)
class ModelCard:
    """The claims of one card's front matter."""

    path: str
    base_model: tuple[str, ...] = ()
    base_model_relation: str | None = None
    license: str | None = None
    datasets: tuple[str, ...] = ()

    def claims(self) -> dict[str, Any]:
        """As metadata claims, keyed ``card.<field>`` (lists as lists)."""
        out: dict[str, Any] = {}
        if self.base_model:
            out["card.base_model"] = self.base_model[0] if len(self.base_model) == 1 else list(self.base_model)
        if self.base_model_relation:
            out["card.base_model_relation"] = self.base_model_relation
        if self.license:
            out["card.license"] = self.license
        if self.datasets:
            out["card.datasets"] = list(self.datasets)
        return out


def _front_matter(text: str, path: str) -> tuple[str, int] | None:
    """The YAML between the opening and closing ``---`` lines and its character offset, or None
    when the card has no front matter."""
    stripped = text.lstrip("\ufeff \t\r\n")
    start = len(text) - len(stripped)
    first, _, rest = stripped.partition("\n")
    if first.rstrip() != _DELIMITER:
        return None
    body_start = start + len(first) + 1
    position = body_start
    for line in rest.splitlines(keepends=True):
        if line.rstrip("\r\n").rstrip() == _DELIMITER:
            return text[body_start:position], body_start
        position += len(line)
    raise MalformedCheckpoint(path, "the front matter has no closing '---' line" if len(text.encode()) < MAX_FRONT_MATTER_BYTES
                              else f"the front matter is longer than {MAX_FRONT_MATTER_BYTES} bytes",
                              field="card: front matter", offset=len(text[:start].encode()))


def _yaml_error(exc: yaml.YAMLError, path: str, byte_offset: Callable[[int], int]) -> MalformedCheckpoint:
    mark = getattr(exc, "problem_mark", None)
    return MalformedCheckpoint(path, f"invalid YAML: {getattr(exc, 'problem', None) or exc}", field="card: front matter",
                               offset=byte_offset(mark.index if mark is not None else 0))


def _check_events(yaml_text: str, path: str, byte_offset: Callable[[int], int]) -> None:
    """Refuse anchors/aliases, and bound the number of events and the nesting, before loading."""
    depth = events = 0
    try:
        for event in yaml.parse(yaml_text, Loader=yaml.SafeLoader):
            events += 1
            where = byte_offset(event.start_mark.index)
            if events > MAX_EVENTS:
                raise LimitExceeded(path, f"more than {MAX_EVENTS} YAML nodes", field="card: front matter", offset=where)
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise MalformedCheckpoint(path, "YAML anchors and aliases are not accepted in a model card",
                                          field="card: front matter", offset=where)
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise LimitExceeded(path, f"YAML nested deeper than {MAX_DEPTH} levels", field="card: front matter",
                                        offset=where)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path, byte_offset) from None


def _names(document: dict[str, Any], key: str, path: str, where: int) -> tuple[str, ...]:
    value = document.get(key)
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, list) or len(items) > MAX_NAMES
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_NAME_CHARS for v in items)):
        raise MalformedCheckpoint(path, f"{key} must be a name or a list of at most {MAX_NAMES} names",
                                  field=f"card: {key}", offset=where)
    return tuple(items)


def _text(document: dict[str, Any], key: str, path: str, where: int, choices: tuple[str, ...] | None = None) -> str | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS or (choices and value not in choices):
        expected = f"one of {', '.join(choices)}" if choices else "a string"
        raise MalformedCheckpoint(path, f"{key} must be {expected}, found {str(value)[:40]!r}", field=f"card: {key}",
                                  offset=where)
    return value


def parse_model_card(data: bytes, path: str) -> ModelCard | None:
    """A card's bytes -> :class:`ModelCard`, or None when it has no front matter."""
    head = data[: MAX_FRONT_MATTER_BYTES + 4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the read limit
            raise MalformedCheckpoint(path, "the card is not UTF-8", field="card", offset=exc.start) from None
        text = head[: exc.start].decode("utf-8")
    found = _front_matter(text, path)
    if found is None:
        return None
    yaml_text, start = found
    base = len(text[:start].encode())

    def byte_offset(index: int) -> int:
        return base + len(yaml_text[:index].encode())

    if len(yaml_text.encode()) > MAX_FRONT_MATTER_BYTES:
        raise LimitExceeded(path, f"the front matter is longer than {MAX_FRONT_MATTER_BYTES} bytes",
                            field="card: front matter", offset=base)
    _check_events(yaml_text, path, byte_offset)
    try:
        document = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:  # e.g. an unhashable (list) key, a bad timestamp
        raise _yaml_error(exc, path, byte_offset) from None
    if document is None:
        return ModelCard(path)
    if not isinstance(document, dict):
        raise MalformedCheckpoint(path, "the front matter is not a YAML mapping", field="card: front matter", offset=base)
    for key in document:
        if not isinstance(key, str):
            raise MalformedCheckpoint(path, f"front matter key {str(key)[:40]!r} is not a string",
                                      field="card: front matter", offset=base)

    def at(key: str) -> int:
        index = yaml_text.find(f"{key}:")
        return byte_offset(index) if index >= 0 else base

    return ModelCard(path, base_model=_names(document, "base_model", path, at("base_model")),
                     base_model_relation=_text(document, "base_model_relation", path, at("base_model_relation"), RELATIONS),
                     license=_text(document, "license", path, at("license")),
                     datasets=_names(document, "datasets", path, at("datasets")))


def read_model_card(directory: str) -> ModelCard | None:
    """The card of a model folder (its ``README.md``), or None when it has none or no front matter."""
    path = os.path.join(directory, CARD_NAME)
    if not os.path.lexists(path):
        return None
    return parse_model_card(read_head(path, "card", MAX_FRONT_MATTER_BYTES + 4096), path)
