"""Options of ``identify``, declared once (:mod:`provenance.options`); ``provenance identify``
generates its command-line options from them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from provenance.options import option


@dataclass(frozen=True)
class IdentifyOptions:
    hashes: Literal["auto", "always", "never"] = option(
        "auto", "Hash the candidate's files and tensors (a full read): auto does it up to 1 GiB.")
