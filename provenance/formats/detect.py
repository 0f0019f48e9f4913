"""Format detection by content (magic bytes and structure), never by file extension."""
from __future__ import annotations

import os
import zipfile

from provenance.errors import MalformedCheckpoint, PickleCheckpointRefused, UnsupportedCheckpoint
from provenance.formats.llama2c_reader import looks_like_llama2c

PICKLE_ADVICE = "pickle checkpoints are never loaded (they can run arbitrary code); convert to safetensors first"


def detect_format(path: str) -> str:
    """One of ``directory``, ``gguf``, ``safetensors``, ``safetensors-index``, ``llama2c``.

    Pickles raise :class:`PickleCheckpointRefused`; anything else unrecognised raises
    :class:`UnsupportedCheckpoint`.
    """
    if os.path.isdir(path):
        return "directory"
    if not os.path.isfile(path):
        raise UnsupportedCheckpoint(path, "no such file or not a regular file")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(64)
    if size == 0:
        raise MalformedCheckpoint(path, "empty file", field="magic", offset=0)
    if prefix.startswith(b"GGUF"):
        return "gguf"
    if prefix[:4] == b"FUGG":
        raise UnsupportedCheckpoint(path, "big-endian GGUF is not supported", field="magic", offset=0)
    # safetensors: u64 header length, then a JSON object. The length is validated by
    # the reader, which gives a precise error for a lying one.
    if len(prefix) >= 9 and prefix[8:9] == b"{":
        return "safetensors"
    if prefix.lstrip()[:1] == b"{":
        return "safetensors-index"
    if _is_pickle(path, prefix):
        raise PickleCheckpointRefused(path, PICKLE_ADVICE, field="magic", offset=0)
    if looks_like_llama2c(prefix, size):
        return "llama2c"
    raise UnsupportedCheckpoint(path, f"unrecognised format (first bytes {prefix[:8].hex()})", field="magic", offset=0)


def _is_pickle(path: str, prefix: bytes) -> bool:
    # Protocol 2+ pickles start with PROTO (0x80) and the protocol number.
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        return True
    # torch.save's zip container holds the pickle as <name>/data.pkl; only the zip's
    # directory is read, never a member.
    if prefix.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(".pkl") for name in archive.namelist()[:100_000])
        except (zipfile.BadZipFile, OSError, ValueError):
            return False
    return False
