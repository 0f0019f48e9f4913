"""Make file-derived strings safe to show on a terminal or in a report.

Names and metadata come from untrusted files: control characters could move the
cursor, rewrite earlier lines or hide text (bidi overrides). Everything printed goes
through :func:`safe_text`.
"""
from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls, DEL, and the Unicode bidi/format controls used in "trojan
# source" style attacks, plus line/paragraph separators; lone surrogates and the two
# non-characters XML forbids (a file's bytes decoded leniently can hold them, and they
# cannot be encoded as UTF-8 or written into XML).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff\ufffe\uffff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object, max_len: int | None = None) -> str:
    """Return ``str(value)`` with control and bidi characters escaped, optionally shortened."""
    text = _UNSAFE.sub(_escape, str(value))
    if max_len is not None and len(text) > max_len:
        text = text[: max(0, max_len - 1)] + "…"
    return text


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|~&])")


def md_escape(value: Any) -> str:
    """Escape a value for Markdown text and table cells (no HTML, no links, no emphasis)."""
    return _MD_SPECIAL.sub(r"\\\1", safe_text(value))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""Spreadsheets evaluate a cell that starts with one of these as a formula (CSV injection)."""


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: strings made safe, with a leading ``'`` before a
    formula start (the OWASP rule); numbers, booleans and None as they are."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        return value
    text = safe_text(value)
    return "'" + text if text.startswith(FORMULA_START) else text
