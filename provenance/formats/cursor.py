"""A bounded little-endian cursor over an untrusted byte buffer.

Every read is checked against the bytes that remain *before* anything is allocated,
and failures raise :class:`MalformedCheckpoint` naming the field and its offset.
"""
from __future__ import annotations

import struct
from typing import Final

from provenance.errors import LimitExceeded, MalformedCheckpoint

_STRUCTS: Final = {fmt: struct.Struct("<" + fmt) for fmt in "bBhHiIqQfd?"}


class BoundedCursor:
    """Sequential reader over ``buffer[start:end]`` that never reads past ``end``."""

    __slots__ = ("buffer", "end", "path", "pos")

    def __init__(self, buffer: bytes | memoryview, path: str, start: int = 0, end: int | None = None) -> None:
        self.buffer = buffer
        self.path = path
        self.pos = start
        self.end = len(buffer) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n_bytes: int, field: str) -> None:
        """Fail unless ``n_bytes`` more bytes are available."""
        if n_bytes < 0 or n_bytes > self.remaining:
            raise MalformedCheckpoint(
                self.path,
                f"truncated: needs {n_bytes} bytes, {self.remaining} remain",
                field=field,
                offset=self.pos,
            )

    def unpack(self, fmt: str, field: str) -> int | float | bool:
        st = _STRUCTS[fmt]
        self.need(st.size, field)
        (value,) = st.unpack_from(self.buffer, self.pos)
        self.pos += st.size
        return value

    def u32(self, field: str) -> int:
        return int(self.unpack("I", field))

    def u64(self, field: str) -> int:
        return int(self.unpack("Q", field))

    def take(self, n_bytes: int, field: str) -> bytes:
        self.need(n_bytes, field)
        data = bytes(self.buffer[self.pos : self.pos + n_bytes])
        self.pos += n_bytes
        return data

    def skip(self, n_bytes: int, field: str) -> None:
        self.need(n_bytes, field)
        self.pos += n_bytes

    def count(self, field: str, *, min_item_bytes: int, cap: int) -> int:
        """Read a u64 count and check it against a hard cap and the bytes left.

        ``min_item_bytes`` is the smallest possible encoding of one item, so a claimed
        count that could not fit in the rest of the file is rejected before any loop
        or allocation is sized by it.
        """
        at = self.pos
        n = self.u64(field)
        if n > cap:
            raise LimitExceeded(self.path, f"count {n} exceeds the cap of {cap}", field=field, offset=at)
        if min_item_bytes > 0 and n > self.remaining // min_item_bytes:
            raise LimitExceeded(
                self.path,
                f"count {n} cannot fit in the {self.remaining} bytes that remain",
                field=field,
                offset=at,
            )
        return n
