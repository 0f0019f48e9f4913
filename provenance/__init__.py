"""provenance: model provenance and watermark forensics for LLM weights.

The CLI (``provenance ...``) is a thin shell over this API::

    from provenance import open_checkpoint, inspect_checkpoint
    with open_checkpoint("model.gguf") as ckpt:
        for start, rows in ckpt.iter_rows("blk.0.attn_q.weight"):
            ...
"""
from provenance.errors import CheckpointError, ProvenanceError
from provenance.formats import Checkpoint, TensorInfo, open_checkpoint
from provenance.inspect import inspect_checkpoint
from provenance.version import __version__

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ProvenanceError",
    "TensorInfo",
    "__version__",
    "inspect_checkpoint",
    "open_checkpoint",
]
