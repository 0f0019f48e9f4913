"""Click commands: each module exposes ``command``; :mod:`provenance.cli` registers them."""
