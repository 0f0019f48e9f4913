"""Format detection by content (magic bytes and structure), never by file extension."""
from __future__ import annotations

import os

from provenance.errors import MalformedCheckpoint, PickleCheckpointRefused, UnsupportedCheckpoint
from provenance.formats.files import open_input, read_exactly
from provenance.formats.llama2c_reader import looks_like_llama2c
from provenance.formats.peft_adapter import is_adapter_folder
from provenance.formats.pickle_scan import is_pickle
from provenance.formats.sentencepiece_model import looks_like_sentencepiece
from provenance.formats.tokenizer_files import find_tokenizer_files, holds_weights

TOKENIZER_PEEK_BYTES = 4096
_INDEX_KEYS = (b'"weight_map"', b'"total_size"')
_TOKENIZER_KEYS = (b'"added_tokens"', b'"pre_tokenizer"', b'"truncation"', b'"normalizer"', b'"model"')
PICKLE_ADVICE = "pickle checkpoints are never loaded (they can run arbitrary code); convert to safetensors first"


def detect_format(path: str) -> str:
    """One of ``directory``, ``peft-adapter``, ``gguf``, ``safetensors``, ``safetensors-index``, ``llama2c``, or a
    tokenizer-only input: ``tokenizer-json``, ``sentencepiece``, ``tokenizer-directory`` (a
    folder with tokenizer files and no weights).

    Pickles raise :class:`PickleCheckpointRefused`; anything else unrecognised raises
    :class:`UnsupportedCheckpoint`; a FIFO, socket or device is refused without blocking.
    """
    if os.path.isdir(path):
        if is_adapter_folder(path):
            return "peft-adapter"
        if not holds_weights(path) and find_tokenizer_files(path).has_vocabulary:
            return "tokenizer-directory"
        return "directory"
    with open_input(path, "magic") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise MalformedCheckpoint(path, "empty file", field="magic", offset=0)
        prefix = read_exactly(handle, 64)
        head = prefix + read_exactly(handle, TOKENIZER_PEEK_BYTES - len(prefix))
        if prefix.startswith(b"GGUF"):
            return "gguf"
        if prefix[:4] == b"FUGG":
            raise UnsupportedCheckpoint(path, "big-endian GGUF is not supported", field="magic", offset=0)
        # safetensors: u64 header length, then a JSON object. The length is validated by
        # the reader, which gives a precise error for a lying one.
        if len(prefix) >= 9 and prefix[8:9] == b"{":
            return "safetensors"
        if prefix.lstrip()[:1] == b"{":
            return _json_kind(head)
        if is_pickle(handle, size, prefix):
            raise PickleCheckpointRefused(path, PICKLE_ADVICE, field="magic", offset=0)
    if looks_like_llama2c(prefix, size):
        return "llama2c"
    if looks_like_sentencepiece(prefix):
        return "sentencepiece"
    raise UnsupportedCheckpoint(path, f"unrecognised format (first bytes {prefix[:8].hex()})", field="magic", offset=0)


def _json_kind(head: bytes) -> str:
    """``tokenizer-json`` or ``safetensors-index``, from the keys in the file's first 4 KiB
    (HF writes a tokenizer.json's ``version``/``truncation``/``added_tokens`` first and an
    index's ``metadata``/``weight_map``); the chosen reader validates the whole file."""
    if any(key in head for key in _INDEX_KEYS):
        return "safetensors-index"
    if any(key in head for key in _TOKENIZER_KEYS):
        return "tokenizer-json"
    return "safetensors-index"
