"""One exception hierarchy for everything that can go wrong with an input file.

Every error about a file names the file, the field being read and the byte offset,
so the one-line message is enough to locate the problem with a hex editor.
"""
from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from provenance.textsafe import safe_text

_P = ParamSpec("_P")
_R = TypeVar("_R")


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


class FileAccessError(CheckpointError):
    """The operating system refused a file (missing, permission denied, I/O error, disk full)."""

    kind = "file-access"


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


def from_os_error(exc: OSError, path: str | Path | None = None, field: str | None = None) -> CheckpointError:
    """The one-line error for an operating-system failure on a file (a symlink loop is a
    malformed input: the folder is broken, not the disk)."""
    where = path if path is not None else exc.filename if exc.filename is not None else "(unknown file)"
    if exc.errno == errno.ELOOP:
        return MalformedCheckpoint(where, "symlink loop (too many levels of symbolic links)", field=field)
    reason = exc.strerror or type(exc).__name__
    return FileAccessError(where, reason[:1].lower() + reason[1:], field=field)


def input_boundary(entry_point: Callable[_P, _R]) -> Callable[_P, _R]:
    """The error boundary of a public entry point (``open_checkpoint``, ``compare``,
    ``identify``...): what a caller catches is :class:`ProvenanceError` for every problem
    with an input, with file, field and offset.

    Readers and analyses raise the project's errors themselves; what can still reach the
    boundary from the operating system (a file removed or made unreadable mid-run, a full
    disk) becomes a :class:`FileAccessError` naming the file. Any other exception is a bug and
    propagates unchanged, never disguised as an input error: the command line shows it with
    exit 70 (``--debug`` for the traceback), with a note naming the entry point.
    """

    @functools.wraps(entry_point)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return entry_point(*args, **kwargs)
        except ProvenanceError:
            raise
        except OSError as exc:
            raise from_os_error(exc) from exc
        except Exception as exc:
            note = f"(a bug, raised inside provenance's {entry_point.__module__}.{entry_point.__qualname__})"
            if hasattr(exc, "add_note") and note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
            raise

    return guarded
