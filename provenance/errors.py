"""One exception hierarchy for everything that can go wrong with an input file.

Every error about a file names the file, the field being read and the byte offset,
so the one-line message is enough to locate the problem with a hex editor.
"""
from __future__ import annotations

from pathlib import Path

from provenance.textsafe import safe_text


class ProvenanceError(Exception):
    """Base class of every error this package raises on purpose."""

    def one_line(self) -> str:
        """The message for a terminal: one line, control characters escaped."""
        return safe_text(str(self)).replace("\\x0a", " ")


class UsageProblem(ProvenanceError):
    """What the user asked for cannot work as given (an invalid policy file, an unknown
    output format): the command line exits 64, like a usage error, not 2."""


class CheckpointError(ProvenanceError):
    """A file could not be read as a checkpoint.

    Attributes are kept separately (not only in the message) so reports and CI outputs
    can carry them as structured fields.
    """

    kind = "checkpoint-error"

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        field: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.path = str(path)
        self.field = field
        self.offset = offset
        self.message = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.field:
            where.append(f"field {safe_text(self.field)}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        location = f" ({', '.join(where)})" if where else ""
        return f"{safe_text(self.path)}{location}: {safe_text(self.message)}"

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "kind": self.kind,
            "field": self.field,
            "offset": self.offset,
            "message": self.message,
        }


class MalformedCheckpoint(CheckpointError):
    """The bytes violate the format (truncated, inconsistent, out of bounds)."""

    kind = "malformed"


class LimitExceeded(MalformedCheckpoint):
    """A count or length exceeds what the file can hold or a hard safety cap."""

    kind = "limit-exceeded"


class UnreadableInput(CheckpointError):
    """The operating system could not read an input (missing, permission denied, I/O error)."""

    kind = "unreadable"


class UnsupportedCheckpoint(CheckpointError):
    """A well-formed file of a format or variant this package does not read."""

    kind = "unsupported"


class PickleCheckpointRefused(UnsupportedCheckpoint):
    """A pickle-based checkpoint (.bin/.pt/.pth). Never loaded, by design."""

    kind = "pickle-refused"


class TensorNotFound(ProvenanceError, KeyError):
    """A tensor name that the checkpoint does not hold."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message plain
        return str(self.args[0]) if self.args else "tensor not found"
