"""provenance: model provenance and watermark forensics for LLM weights.

The CLI (``provenance ...``) is a thin shell over this API::

    from provenance import open_checkpoint, inspect_checkpoint
    with open_checkpoint("model.gguf") as ckpt:
        for start, rows in ckpt.iter_rows("blk.0.attn_q.weight"):
            ...

The readers (numpy, the gguf package) load when one of their names is first used
(:mod:`provenance.lazy`): importing any submodule imports this package first, and
``provenance --version`` or a tokenizer-only ``identify`` should not pay for what they do
not read.
"""
from typing import TYPE_CHECKING

from provenance.errors import CheckpointError, ProvenanceError
from provenance.lazy import lazy_package
from provenance.version import __version__

if TYPE_CHECKING:
    from provenance.formats import Checkpoint, TensorInfo, open_checkpoint
    from provenance.inspect import inspect_checkpoint

lazy_package(__name__, {
    "Checkpoint": "provenance.formats",
    "TensorInfo": "provenance.formats",
    "open_checkpoint": "provenance.formats",
    "inspect_checkpoint": "provenance.inspect",
})
__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ProvenanceError",
    "TensorInfo",
    "__version__",
    "inspect_checkpoint",
    "open_checkpoint",
]
