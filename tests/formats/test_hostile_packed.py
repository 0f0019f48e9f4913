"""Hostile variants of each quantized safetensors layout (built from files the real
writers wrote): wrong group counts, g_idx out of range, scales of the wrong shape, lying
shapes and quant states all end in one clean error naming file and field."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from provenance.errors import MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats import open_checkpoint
from tests.formats.test_hostile_safetensors import expect_failure
from tests.support.packed_writers import packed_source, written

__all__ = ["packed_source"]  # a fixture

Edit = Callable[[dict[str, torch.Tensor], dict], None]
Q = "model.layers.0.self_attn.v_proj"


def _variant(kind: str, src: Path, tmp: pytest.TempPathFactory, edit: Edit, out: Path) -> Path:
    base = written(kind, src, tmp)
    shutil.copytree(base, out)
    weights = next(out.glob("*.safetensors"))
    with safe_open(str(weights), "pt") as h:
        tensors = {k: h.get_tensor(k) for k in h.keys()}
        meta = h.metadata()
    config = json.loads((out / "config.json").read_text())
    edit(tensors, config)
    save_file(tensors, str(weights), metadata=meta)
    (out / "config.json").write_text(json.dumps(config))
    return out


def _set(name: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Edit:
    def edit(t: dict[str, torch.Tensor], _: dict) -> None:
        t[name] = value(t[name]).contiguous()
    return edit


def _config(path: list[str], value: object) -> Edit:
    def edit(_: dict[str, torch.Tensor], c: dict) -> None:
        node = c
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _state(text: bytes) -> Edit:
    def edit(t: dict[str, torch.Tensor], _: dict) -> None:
        t[f"{Q}.weight.quant_state.bitsandbytes__nf4"] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return edit


def _each_ct_group(key: str, value: object) -> Edit:
    def edit(_: dict[str, torch.Tensor], c: dict) -> None:
        for group in c["quantization_config"]["config_groups"].values():
            group["weights"][key] = value
    return edit


CASES: list[tuple[str, str, Edit, type, str]] = [
    ("gptq", "scales-groups", _set(f"{Q}.scales", lambda x: x[:-1]), MalformedCheckpoint, "groups"),
    ("gptq", "g_idx-range", _set(f"{Q}.g_idx", lambda x: x + 1000), MalformedCheckpoint, "outside the 4 stored groups"),
    ("gptq", "g_idx-length", _set(f"{Q}.g_idx", lambda x: x[:-1]), MalformedCheckpoint, "expected [128]"),
    ("gptq", "qzeros-shape", _set(f"{Q}.qzeros", lambda x: x[:, :-1]), MalformedCheckpoint, "qzeros"),
    ("gptq", "qweight-dtype", _set(f"{Q}.qweight", lambda x: x.to(torch.int64)), MalformedCheckpoint, "expected I32"),
    ("gptq", "bits-3", _config(["quantization_config", "bits"], 3), UnsupportedCheckpoint, "bits=3"),
    ("gptq", "group-string", _config(["quantization_config", "group_size"], "32"), MalformedCheckpoint, "group_size"),
    ("gptq", "no-method", _config(["quantization_config"], {"bits": 4}), MalformedCheckpoint, "quant_method"),
    ("awq", "scales-shape", _set(f"{Q}.scales", lambda x: x[:, :-8]), MalformedCheckpoint, "scales"),
    ("awq", "version", _config(["quantization_config", "version"], "gemv"), UnsupportedCheckpoint, "gemv"),
    ("ct-pack", "weight-shape-lies", _set(f"{Q}.weight_shape", lambda x: x * 1000), MalformedCheckpoint, "weight_shape"),
    ("ct-pack", "scale-shape", _set(f"{Q}.weight_scale", lambda x: x[:, :-1]), MalformedCheckpoint, "matches no config group"),
    ("ct-pack", "no-group", _config(["quantization_config", "config_groups"], {}), MalformedCheckpoint, "config_groups"),
    ("ct-pack", "group-bits-string", _each_ct_group("num_bits", "4"), MalformedCheckpoint, "weights.num_bits"),
    ("ct-fp8", "scale-rows", _set(f"{Q}.weight_scale", lambda x: x[:-1]), MalformedCheckpoint, "weight_scale"),
    ("bnb-nf4", "absmax-count", _set(f"{Q}.weight.absmax", lambda x: x[:-1]), MalformedCheckpoint, "absmax"),
    ("bnb-nf4", "state-json", _state(b"{not json"), MalformedCheckpoint, "invalid JSON"),
    ("bnb-nf4", "state-shape", _state(json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "float32",
                                                  "shape": [1 << 30, 1 << 30]}).encode()), MalformedCheckpoint, "shape"),
    ("bnb-nf4", "state-blocksize", _state(json.dumps({"quant_type": "nf4", "blocksize": 7, "dtype": "float32",
                                                      "shape": [64, 128]}).encode()), MalformedCheckpoint, "blocksize"),
    ("bnb-nf4", "state-dtype", _state(json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "int8",
                                                  "shape": [64, 128]}).encode()), MalformedCheckpoint, "dtype"),
    ("bnb-nf4", "state-huge", _state(b" " * 10_000), MalformedCheckpoint, "at most 4096"),
    ("bnb-int8", "scb-length", _set(f"{Q}.SCB", lambda x: x[:-1]), MalformedCheckpoint, "SCB"),
    ("mlx", "scales-shape", _set(f"{Q}.scales", lambda x: x[:, :-1]), MalformedCheckpoint, "scales"),
    ("mlx", "biases-dtype", _set(f"{Q}.biases", lambda x: x.half()), MalformedCheckpoint, "biases"),
    ("mlx", "bits-5", _config(["quantization", "bits"], 5), UnsupportedCheckpoint, "bits=5"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "case", "edit", "error", "match"), CASES, ids=[f"{k}-{c}" for k, c, *_ in CASES])
def test_hostile_variant_fails_cleanly(kind: str, case: str, edit: Edit, error: type, match: str, packed_source: Path,
                                       tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    bad = _variant(kind, packed_source, tmp_path_factory, edit, tmp_path / case)
    with open_checkpoint(written(kind, packed_source, tmp_path_factory)) as good:  # the process' one-time numba set-up
        good.read(next(n for n, i in good.tensors.items() if i.packing is not None))  # is not the hostile file's time
    failure = expect_failure(bad, error, match)
    assert failure.path.startswith(str(bad))
