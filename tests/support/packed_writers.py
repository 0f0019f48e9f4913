"""Quantized safetensors checkpoints written by each ecosystem's own writer, and each
ecosystem's own dequantizer, for the packed-layout tests and the benchmark.

Writers (all CPU):
* GPTQ, AWQ (GEMM) and compressed-tensors ``pack-quantized``: Intel's auto-round
  (``AutoRound(iters=0)``: round-to-nearest, exported with its ``auto_gptq``, ``auto_awq``
  and ``llm_compressor`` packers). GPTQModel needs torch >= 2.14.1 (this project pins 2.13.0
  CPU) and is not installed.
* AWQ (GEMM) by AutoAWQ itself (``AutoAWQForCausalLM.quantize``: the activation-aware scale
  search on calibration tokens, then its own packer).
* compressed-tensors int8/fp8: ``compressed_tensors``' own compressors over RTN scales.
* bitsandbytes NF4/FP4/LLM.int8: transformers ``BitsAndBytesConfig`` + ``save_pretrained``.
* MLX: ``mlx_lm.convert`` (mlx's Linux CPU build).

Each writer is an optional dependency (``pip install -e '.[formats]'``); a test that needs
a missing one is skipped with the reason.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import LLAMA2_SPM, save_tiny_model

HIDDEN, FFN = 128, 256


def require(module: str) -> Any:
    return pytest.importorskip(module, reason=f"{module} (a real writer; `make setup-dev` installs it) is not installed")


def tiny_source(directory: Path, seed: int) -> Path:
    """A tiny llama written by transformers, with a real tokenizer (auto-round and mlx_lm load one)."""
    save_tiny_model(directory, "llama", seed=seed, hidden_size=HIDDEN, intermediate_size=FFN)
    from transformers import LlamaTokenizer

    shutil.copy(LLAMA2_SPM, directory / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))
    return directory


def write_auto_round(src: Path, out: Path, fmt: str, bits: int = 4, group_size: int = 32, sym: bool = False) -> Path:
    """``fmt``: ``auto_gptq``, ``auto_awq`` or ``llm_compressor``."""
    require("auto_round")
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src))
    rounder = AutoRound(model, tokenizer=tok, bits=bits, group_size=group_size, sym=sym, iters=0, disable_opt_rtn=True)
    rounder.quantize_and_save(str(out), format=fmt)
    written = [p.parent for p in out.rglob("config.json")]
    return written[0]


def write_autoawq(src: Path, out: Path) -> Path:
    """AWQ GEMM 4-bit, group 32, by AutoAWQ on random calibration tokens (the tiny model's
    vocabulary is smaller than its tokenizer's; without clipping search to keep it quick)."""
    require("awq")
    import random

    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    model = AutoAWQForCausalLM.from_pretrained(str(src), device_map="cpu", torch_dtype=torch.float32)
    draw = random.Random(0)
    calibration = [[draw.randrange(model.model.config.vocab_size) for _ in range(32)] for _ in range(8)]
    model.quantize(AutoTokenizer.from_pretrained(str(src)), quant_config={"zero_point": True, "q_group_size": 32,
                   "w_bit": 4, "version": "GEMM"}, calib_data=calibration, max_calib_seq_len=64, apply_clip=False)
    model.save_quantized(str(out))
    return out


def write_bnb(src: Path, out: Path, kind: str) -> Path:
    """``kind``: ``nf4`` (double quantization), ``fp4`` or ``int8``."""
    require("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if kind == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_use_double_quant=kind == "nf4",
                                    bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(src), quantization_config=config, device_map="cpu")
    model.save_pretrained(str(out))
    return out


def write_mlx(src: Path, out: Path, bits: int = 4, group_size: int = 32, dtype: str | None = None) -> Path:
    require("mlx.core")
    require("mlx_lm")
    from mlx_lm import convert

    kwargs = {"dtype": dtype} if dtype else {}
    convert(str(src), mlx_path=str(out), quantize=True, q_group_size=group_size, q_bits=bits, **kwargs)
    return out


def write_compressed(src: Path, out: Path, kind: str) -> Path:
    """compressed-tensors ``int-quantized`` (``kind='int'``, int8 per channel, symmetric)
    or ``float-quantized`` (``kind='float'``, fp8 e4m3 per channel), through the library's
    own ``ModelCompressor`` from RTN scales (absmax / qmax per output channel)."""
    require("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    args = QuantizationArgs(num_bits=8, type=kind, strategy="channel", symmetric=True)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"],
                                 quantization_status=QuantizationStatus.FROZEN,
                                 format="int-quantized" if kind == "int" else "float-quantized")
    apply_quantization_config(model, qconfig)
    qmax = 127.0 if kind == "int" else 448.0
    for name, module in model.named_modules():
        if hasattr(module, "weight_scale") and not name.endswith("lm_head"):
            with torch.no_grad():
                amax = module.weight.abs().amax(dim=1, keepdim=True)
                module.weight_scale.copy_((amax / qmax).to(module.weight_scale.dtype))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=qconfig.format)
    compressor.compress_model(model)
    model.save_pretrained(str(out))
    compressor.update_config(str(out))
    return out


def config_of(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "config.json").read_text())


WRITERS: dict[str, Callable[[Path, Path], Path]] = {
    "gptq": lambda s, o: write_auto_round(s, o, "auto_gptq"),
    "gptq-sym-8bit": lambda s, o: write_auto_round(s, o, "auto_gptq", bits=8, group_size=64, sym=True),
    "awq": lambda s, o: write_auto_round(s, o, "auto_awq"),
    "awq-autoawq": write_autoawq,
    "ct-pack": lambda s, o: write_auto_round(s, o, "llm_compressor", sym=True),
    "ct-int": lambda s, o: write_compressed(s, o, "int"),
    "ct-fp8": lambda s, o: write_compressed(s, o, "float"),
    "bnb-nf4": lambda s, o: write_bnb(s, o, "nf4"),
    "bnb-fp4": lambda s, o: write_bnb(s, o, "fp4"),
    "bnb-int8": lambda s, o: write_bnb(s, o, "int8"),
    "mlx": lambda s, o: write_mlx(s, o),
    "mlx-f16": lambda s, o: write_mlx(s, o, bits=8, group_size=64, dtype="float16"),
}
LABELS = {"gptq": "GPTQ-4b-g32", "gptq-sym-8bit": "GPTQ-8b-g64", "awq": "AWQ-4b-g32", "awq-autoawq": "AWQ-4b-g32",
          "ct-pack": "CT-int-4b-g32", "ct-int": "CT-int-8b", "ct-fp8": "CT-fp8", "bnb-nf4": "BNB-nf4", "bnb-fp4": "BNB-fp4",
          "bnb-int8": "BNB-int8", "mlx": "MLX-4b-g32", "mlx-f16": "MLX-8b-g64"}


@pytest.fixture(scope="session")
def packed_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("packed") / "src", seed=11)


@pytest.fixture(scope="session")
def packed_unrelated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("packed") / "other", seed=12)


_written: dict[str, Path] = {}


def written(kind: str, src: Path, tmp: pytest.TempPathFactory) -> Path:
    if kind not in _written:
        _written[kind] = WRITERS[kind](src, tmp.mktemp("packed") / kind)
    return _written[kind]


