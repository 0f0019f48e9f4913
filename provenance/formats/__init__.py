"""Checkpoint readers behind one interface; see :mod:`provenance.formats.base`."""
from __future__ import annotations

import os
from pathlib import Path

from provenance.errors import MalformedCheckpoint, input_boundary
from provenance.formats.base import Checkpoint, TensorInfo
from provenance.formats.detect import detect_format
from provenance.formats.gguf_reader import GGUFCheckpoint
from provenance.formats.llama2c_reader import Llama2cCheckpoint
from provenance.formats.locators import ModelLocation, locate
from provenance.formats.model_card import ModelCard, read_model_card
from provenance.formats.peft_adapter import PeftAdapterCheckpoint
from provenance.formats.safetensors_reader import SafetensorsCheckpoint, open_directory, open_index, read_config
from provenance.formats.tokenizer_files import TokenizerCheckpoint, open_tokenizer

__all__ = ["Checkpoint", "GGUFCheckpoint", "Llama2cCheckpoint", "ModelCard", "ModelLocation", "PeftAdapterCheckpoint",
           "SafetensorsCheckpoint", "TensorInfo", "TokenizerCheckpoint", "detect_format", "locate", "open_checkpoint"]


@input_boundary
def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open any supported checkpoint: GGUF (single or split), safetensors (single file,
    ``model.safetensors.index.json``, or an HF directory with ``config.json``) or
    llama2.c; or a tokenizer without weights (``tokenizer.json``, a SentencePiece
    ``tokenizer.model``, a folder of tokenizer files), opened with no tensors. The format
    is decided by content; pickles are refused.

    ``path`` may also name a model in a local store: ``hf:ORG/NAME[@REVISION][/PATH]`` or a
    bare ``ORG/NAME`` (the Hugging Face cache), ``ollama:NAME[:TAG]`` (Ollama's GGUF blob);
    see :func:`provenance.formats.locators.locate`. The checkpoint's ``location`` says where
    such a name led.

    Every problem with the file raises a :class:`provenance.errors.CheckpointError` naming
    the file, the field and the offset (:func:`provenance.errors.input_boundary`).
    """
    try:
        location = locate(path)
    except OSError as exc:  # a store folder that cannot be listed or read
        raise MalformedCheckpoint(os.fspath(path), f"{type(exc).__name__}: {exc}") from None
    checkpoint = _open_path(location.path)
    if location.source != "path":
        checkpoint.location = location
        checkpoint.warnings.extend(location.notes)
    card_folder = location.card_directory or (location.path if os.path.isdir(location.path) else None)
    if card_folder is not None:
        try:
            checkpoint.model_card = read_model_card(card_folder)
        except BaseException:
            checkpoint.close()
            raise
    return checkpoint


def _open_path(path: str) -> Checkpoint:
    kind = detect_format(path)
    if kind == "directory":
        return open_directory(path)
    if kind == "peft-adapter":
        return PeftAdapterCheckpoint(path)
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
