"""The reference database: identify a checkpoint's family without the reference weights.

``build_entry`` turns a local model into an entry; ``RefDB`` lists, loads and writes
entries (default: the shipped database, see :func:`default_refdb_path`); ``identify``
ranks entries against a candidate with evidence per signal. See ``docs/refdb.md``.
"""
from typing import TYPE_CHECKING

from provenance.lazy import lazy_package

if TYPE_CHECKING:
    from provenance.refdb.build import build_entry
    from provenance.refdb.identify import CandidateMatch, Evidence, IdentifyResult, identify
    from provenance.refdb.options import IdentifyOptions
    from provenance.refdb.schema import SCHEMA, RefDBError, RefEntry
    from provenance.refdb.store import RefDB, default_refdb_path

lazy_package(__name__, {
    "build_entry": "provenance.refdb.build",
    "CandidateMatch": "provenance.refdb.identify",
    "Evidence": "provenance.refdb.identify",
    "IdentifyResult": "provenance.refdb.identify",
    "identify": "provenance.refdb.identify",
    "IdentifyOptions": "provenance.refdb.options",
    "SCHEMA": "provenance.refdb.schema",
    "RefDBError": "provenance.refdb.schema",
    "RefEntry": "provenance.refdb.schema",
    "RefDB": "provenance.refdb.store",
    "default_refdb_path": "provenance.refdb.store",
})
__all__ = [
    "SCHEMA", "CandidateMatch", "Evidence", "IdentifyOptions", "IdentifyResult", "RefDB", "RefDBError",
    "RefEntry", "build_entry", "default_refdb_path", "identify",
]
