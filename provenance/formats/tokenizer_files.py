"""Tokenizer-only inputs: a ``tokenizer.json``, a SentencePiece ``tokenizer.model``, or a
folder that holds tokenizer files but no weights, opened as a checkpoint with no tensors.

The vocabulary is parsed (and so validated) when the input is opened, so a hostile file
fails at open time with one error line, like any other reader. ``tokenizer.json`` wins
over ``tokenizer.model`` when a folder has both (it carries the added tokens);
``tokenizer_config.json`` and ``special_tokens_map.json`` name the special tokens.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from provenance.errors import UnsupportedCheckpoint
from provenance.formats.base import Checkpoint, FileSpan, TensorInfo
from provenance.formats.files import file_size, member_if_present
from provenance.formats.sentencepiece_model import read_sentencepiece_model
from provenance.formats.tokenizer_json import read_tokenizer_json, special_tokens_from_config
from provenance.formats.vocabulary import Vocabulary

TOKENIZER_JSON, SENTENCEPIECE = "tokenizer.json", "tokenizer.model"
CONFIG_NAMES = ("tokenizer_config.json", "special_tokens_map.json")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".safetensors.index.json")


@dataclass
class TokenizerFiles:
    """The tokenizer files of one folder (absolute paths; None where absent)."""

    tokenizer_json: str | None = None
    sentencepiece: str | None = None
    configs: tuple[str, ...] = ()

    @property
    def has_vocabulary(self) -> bool:
        return self.tokenizer_json is not None or self.sentencepiece is not None

    @property
    def paths(self) -> list[str]:
        return [p for p in (self.tokenizer_json, self.sentencepiece, *self.configs) if p]


def find_tokenizer_files(directory: str) -> TokenizerFiles:
    def present(name: str) -> str | None:
        return member_if_present(directory, name, name)

    return TokenizerFiles(present(TOKENIZER_JSON), present(SENTENCEPIECE),
                          tuple(p for p in (present(n) for n in CONFIG_NAMES) if p))


def holds_weights(directory: str) -> bool:
    """Whether a folder has anything a weight reader should look at (weights or pickles)."""
    return any(name.endswith(WEIGHT_SUFFIXES) for name in os.listdir(directory))


def read_tokenizer_files(files: TokenizerFiles) -> Vocabulary:
    """The vocabulary of a folder's tokenizer files, special ids from its config files."""
    if files.tokenizer_json is not None:
        vocab = read_tokenizer_json(files.tokenizer_json, keep_merges=False)  # by hash and count, as a GGUF's
    elif files.sentencepiece is not None:
        vocab = read_sentencepiece_model(files.sentencepiece)
    else:
        raise ValueError("no tokenizer.json or tokenizer.model")
    for config in files.configs:
        # special_tokens_map.json is read last and wins: transformers writes it from the live tokenizer.
        vocab.special_tokens.update(special_tokens_from_config(config, vocab.tokens))
    return vocab


class TokenizerCheckpoint(Checkpoint):
    """A tokenizer without weights: metadata and tensors are empty, :attr:`vocabulary` is set."""

    def __init__(self, path: str, files: TokenizerFiles, kind: str) -> None:
        super().__init__(path)
        self.format = kind
        self.vocabulary: Vocabulary = read_tokenizer_files(files)
        self.files = [FileSpan(p, file_size(p), 0, 0) for p in files.paths]

    @property
    def architecture(self) -> Any:
        from provenance.names.arch import ArchRecord

        return ArchRecord()  # a tokenizer states no architecture (its size is the vocabulary's, compared there)

    def _decode_rows(self, info: TensorInfo, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError("a tokenizer holds no tensors")


def open_tokenizer(path: str, kind: str) -> TokenizerCheckpoint:
    """Open a tokenizer-only input of the kind :func:`provenance.formats.detect.detect_format` gave."""
    if kind == "tokenizer-directory":
        files = find_tokenizer_files(path)
    elif kind == "tokenizer-json":
        files = TokenizerFiles(tokenizer_json=path, configs=_configs_beside(path))
    elif kind == "sentencepiece":
        files = TokenizerFiles(sentencepiece=path, configs=_configs_beside(path))
    else:
        raise UnsupportedCheckpoint(path, f"not a tokenizer input ({kind})")
    return TokenizerCheckpoint(path, files, kind)


def _configs_beside(path: str) -> tuple[str, ...]:
    # A lone file's special-token names, when its folder has them (an HF tokenizer folder).
    return find_tokenizer_files(os.path.dirname(os.path.abspath(path))).configs
