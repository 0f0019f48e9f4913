"""The reference database: identify a checkpoint's family without the reference weights.

``build_entry`` turns a local model into an entry; ``RefDB`` lists, loads and writes
entries (default: the shipped database, see :func:`default_refdb_path`); ``identify``
ranks entries against a candidate with evidence per signal. See ``docs/refdb.md``.
"""
from provenance.refdb.build import build_entry
from provenance.refdb.identify import CandidateMatch, Evidence, IdentifyResult, identify
from provenance.refdb.schema import SCHEMA, RefDBError, RefEntry
from provenance.refdb.store import RefDB, default_refdb_path

__all__ = ["SCHEMA", "CandidateMatch", "Evidence", "IdentifyResult", "RefDB", "RefDBError", "RefEntry",
           "build_entry", "default_refdb_path", "identify"]
