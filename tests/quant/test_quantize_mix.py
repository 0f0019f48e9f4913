"""llama.cpp's per-tensor type recipe against the real llama.cpp files."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from provenance.formats import open_checkpoint
from provenance.quant.quantize_mix import (
    MixModel,
    TensorSpec,
    llama_weight_order,
    parse_ftype,
    tensor_types,
)
from provenance.quant.writer import mix_model
from tests.conftest import QUANT_DIR

FILES = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS"]


def _specs(path: str) -> tuple[list[TensorSpec], MixModel]:
    with open_checkpoint(path) as ckpt:
        return [TensorSpec(n, i.shape, i.dtype) for n, i in ckpt.tensors.items()], mix_model(ckpt)


@pytest.mark.parametrize("ftype", FILES)
def test_recipe_equals_llama_cpp_tiny_llama(ftype: str) -> None:
    specs, model = _specs(str(QUANT_DIR / "tiny-llama-f32.gguf"))
    predicted = tensor_types(specs, ftype, model)
    with open_checkpoint(QUANT_DIR / f"tiny-llama-{ftype}.gguf") as q:
        actual = {n: i.dtype for n, i in q.tensors.items()}
    assert predicted == actual
    assert list(predicted) == list(actual)  # llama.cpp's tensor order too


def test_recipe_equals_llama_cpp_stories260k_fallbacks() -> None:
    specs, model = _specs(str(QUANT_DIR / "stories260K-f32.gguf"))
    predicted = tensor_types(specs, "Q8_0", model)
    with open_checkpoint(QUANT_DIR / "stories260K-Q8_0.gguf") as q:
        assert predicted == {n: i.dtype for n, i in q.tensors.items()}
    assert predicted["blk.0.ffn_down.weight"] == "F16"  # rows of 172: no 32-block type fits


def test_stories260k_k_quant_fallbacks() -> None:
    """Rows of 64 cannot hold a 256-weight super-block: Q4_K -> Q5_0, Q6_K -> Q8_0,
    Q2_K/Q3_K -> Q4_0, Q5_K -> Q5_1; rows of 172 fit nothing -> F16; the tied
    token_embd takes the output rule (Q8_0 when the row does not fit a K-quant)."""
    specs, model = _specs(str(QUANT_DIR / "stories260K-f32.gguf"))
    assert model.n_layer == 5 and model.n_gqa == 2
    t = tensor_types(specs, "Q4_K_M", model)
    assert t["token_embd.weight"] == "Q8_0"
    assert t["blk.0.attn_q.weight"] == "Q5_0"
    # use_more_bits(i, 5) holds for i = 2 ((i - 0) % 3 == 2) and 4 (i >= 7*5/8): Q6_K -> Q8_0
    assert [t[f"blk.{i}.attn_v.weight"] for i in range(5)] == ["Q5_0", "Q5_0", "Q8_0", "Q5_0", "Q8_0"]
    assert t["blk.0.ffn_down.weight"] == "F16"
    assert t["blk.0.attn_norm.weight"] == "F32"
    t = tensor_types(specs, "Q2_K", model)
    assert t["blk.2.attn_q.weight"] == "Q4_0" and t["blk.2.attn_v.weight"] == "Q4_0"
    assert tensor_types(specs, "Q5_K_M", model)["blk.3.attn_k.weight"] == "Q5_1"


def test_layer_rules_on_a_32_layer_model() -> None:
    """use_more_bits and the Q3_K_M / Q4_K_S / Q2_K layer rules on a 7B-like shape."""
    specs = [TensorSpec("token_embd.weight", (32000, 4096)), TensorSpec("output.weight", (32000, 4096))]
    for i in range(32):
        for role, shape in (("attn_q", (4096, 4096)), ("attn_v", (1024, 4096)), ("attn_output", (4096, 4096)),
                            ("ffn_down", (4096, 11008)), ("ffn_up", (11008, 4096))):
            specs.append(TensorSpec(f"blk.{i}.{role}.weight", shape))
        specs.append(TensorSpec(f"blk.{i}.attn_norm.weight", (4096,)))
    model = MixModel("llama", 32, 32, 8)
    t = tensor_types(specs, "Q4_K_M", model)
    more = [i for i in range(32) if t[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert t["output.weight"] == "Q6_K" and t["token_embd.weight"] == "Q4_K"
    t = tensor_types(specs, "Q3_K_M", model)
    assert [t[f"blk.{i}.attn_v.weight"] for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert [t[f"blk.{i}.ffn_down.weight"] for i in (0, 1, 2)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert t["blk.5.attn_output.weight"] == "Q4_K" and t["blk.5.attn_q.weight"] == "Q3_K"
    t = tensor_types(specs, "Q2_K", model)
    assert t["blk.4.attn_v.weight"] == "Q4_K"  # n_gqa = 4
    assert t["blk.4.ffn_down.weight"] == "Q3_K" and t["blk.4.ffn_up.weight"] == "Q2_K"
    t = tensor_types(specs, "Q4_K_S", model)
    assert [t[f"blk.{i}.attn_v.weight"] for i in (3, 4)] == ["Q5_K", "Q4_K"]
    assert [t[f"blk.{i}.ffn_down.weight"] for i in (3, 4)] == ["Q5_K", "Q4_K"]
    assert set(tensor_types(specs, "Q8_0", model).values()) == {"Q8_0", "F32"}
    assert tensor_types(specs, "f16", model)["blk.0.attn_q.weight"] == "F16"
    assert tensor_types(specs, "Q6_K", model)["token_embd.weight"] == "Q6_K"


def test_order_and_ftype_names() -> None:
    names = ["blk.10.a.weight", "blk.2.b.weight", "output.weight", "blk.0.attn_k.weight", "token_embd.weight", "output_norm.weight"]
    assert llama_weight_order(names) == ["output.weight", "output_norm.weight", "token_embd.weight",
                                         "blk.0.attn_k.weight", "blk.2.b.weight", "blk.10.a.weight"]
    assert parse_ftype("q4_k_m").name == "MOSTLY_Q4_K_M" and parse_ftype("f32").name == "ALL_F32"
    with pytest.raises(ValueError):
        parse_ftype("Q7_K")
