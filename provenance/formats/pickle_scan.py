"""Recognising pickle checkpoints without loading them: by their opcodes and, for torch's
zip container, by the member names of the archive's central directory.

Nothing here unpickles or decompresses. Protocol 2+ pickles start with ``PROTO``;
protocol 0 and 1 pickles (``torch.save(..., pickle_protocol=0)``, old ``.bin`` files) have no
magic, so the first opcodes are walked with :func:`pickletools.genops` (which only
decodes opcodes and their arguments) over a bounded prefix. A zip is read through its
end-of-central-directory record with hard caps on entries and bytes, never with
:mod:`zipfile`, which sizes its read by the archive's own claim and raises
``NotImplementedError`` on a crafted version field.
"""
from __future__ import annotations

import io
import pickletools
import struct
from typing import BinaryIO

from provenance.formats.files import read_exactly

PICKLE_PEEK_BYTES = 64 * 1024
MAX_ZIP_ENTRIES = 100_000
MAX_CENTRAL_DIRECTORY_BYTES = 64 * 1024 * 1024
_EOCD, _EOCD64_LOCATOR, _EOCD64, _CENTRAL = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06", b"PK\x01\x02"
_OPENING_OPCODES = {"MARK", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "GLOBAL", "PROTO"}
_MIN_OPCODES = 3


def is_pickle(handle: BinaryIO, size: int, prefix: bytes) -> bool:
    """Whether the open file is a pickle or a torch zip holding one (``*.pkl`` member)."""
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return True
    if prefix.startswith(b"PK\x03\x04"):
        return any(name.endswith(b".pkl") for name in zip_member_names(handle, size))
    return _opcodes_pickle(read_at(handle, 0, min(size, PICKLE_PEEK_BYTES)), complete=size <= PICKLE_PEEK_BYTES)


def _opcodes_pickle(data: bytes, complete: bool) -> bool:
    """A protocol 0/1 pickle: it opens as pickles do and parses as opcodes to its ``STOP`` (or,
    when only a prefix was read, through the prefix but for its possibly cut last opcode)."""
    count, last_end = 0, 0
    stream = io.BytesIO(data)
    try:
        for opcode, _arg, _position in pickletools.genops(stream):
            if count == 0 and opcode.name not in _OPENING_OPCODES:
                return False
            count += 1
            last_end = stream.tell()
            if opcode.name == "STOP":
                return count >= _MIN_OPCODES
    except ValueError:
        # genops decodes arguments (lines, lengths, numbers) and raises ValueError on any bad one.
        return not complete and count >= 16 and len(data) - last_end < 1024
    return False


def read_at(handle: BinaryIO, offset: int, n_bytes: int) -> bytes:
    handle.seek(offset)
    return read_exactly(handle, n_bytes)


def zip_member_names(handle: BinaryIO, size: int) -> list[bytes]:
    """Member names from a zip's central directory (at most :data:`MAX_ZIP_ENTRIES`; an
    unreadable directory gives none)."""
    tail_at = max(0, size - (22 + 65535))
    tail = read_at(handle, tail_at, size - tail_at)
    end = tail.rfind(_EOCD)
    if end < 0 or len(tail) - end < 22:
        return []
    entries, cd_size, cd_offset = struct.unpack_from("<10xHII", tail, end)
    locator = end - 20
    if (entries == 0xFFFF or cd_offset == 0xFFFFFFFF) and locator >= 0 and tail[locator:locator + 4] == _EOCD64_LOCATOR:
        (record_at,) = struct.unpack_from("<Q", tail, locator + 8)
        record = read_at(handle, record_at, 56) if record_at <= size - 56 else b""
        if record[:4] == _EOCD64:
            entries, cd_size, cd_offset = struct.unpack_from("<QQQ", record, 32)
    if cd_offset > size:
        return []
    directory = read_at(handle, cd_offset, min(cd_size, MAX_CENTRAL_DIRECTORY_BYTES, size - cd_offset))
    names, pos = [], 0
    for _ in range(min(entries, MAX_ZIP_ENTRIES)):
        if directory[pos:pos + 4] != _CENTRAL or len(directory) - pos < 46:
            break
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", directory, pos + 28)
        names.append(directory[pos + 46:pos + 46 + name_len])
        pos += 46 + name_len + extra_len + comment_len
    return names
