"""Checkpoint readers behind one interface; see :mod:`provenance.formats.base`."""
from __future__ import annotations

import os
from pathlib import Path

from provenance.errors import input_boundary
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.detect import detect_format
from provenance.formats.gguf_reader import GGUFCheckpoint
from provenance.formats.llama2c_reader import Llama2cCheckpoint
from provenance.formats.safetensors_reader import SafetensorsCheckpoint, open_directory, open_index, read_config
from provenance.formats.tokenizer_files import TokenizerCheckpoint, open_tokenizer

__all__ = ["Checkpoint", "GGUFCheckpoint", "Llama2cCheckpoint", "SafetensorsCheckpoint", "TensorInfo", "TokenizerCheckpoint",
           "detect_format", "open_checkpoint"]


@input_boundary
def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open any supported checkpoint: GGUF (single or split), safetensors (single file,
    ``model.safetensors.index.json``, or an HF directory with ``config.json``) or
    llama2.c; or a tokenizer without weights (``tokenizer.json``, a SentencePiece
    ``tokenizer.model``, a folder of tokenizer files), opened with no tensors. The format
    is decided by content; pickles are refused.

    Every problem with the file raises a :class:`provenance.errors.CheckpointError` naming
    the file, the field and the offset (:func:`provenance.errors.input_boundary`).
    """
    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "directory":
        return open_directory(path)
    if kind == "gguf":
        return GGUFCheckpoint(path)
    if kind == "safetensors-index":
        return open_index(path)
    if kind == "llama2c":
        return Llama2cCheckpoint(path)
    if kind in ("tokenizer-json", "sentencepiece", "tokenizer-directory"):
        return open_tokenizer(path, kind)
    # A lone safetensors file takes its architecture from a config.json beside it.
    return SafetensorsCheckpoint(path, config=read_config(os.path.dirname(os.path.abspath(path))))
