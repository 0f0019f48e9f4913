"""Structural derivatives (provenance.synth.structure): what each builder writes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("mergekit")

from provenance.formats import open_checkpoint
from provenance.synth import structure as st
from provenance.synth.store import load_synth_model, read_weights, synth_model_path

TOKENS = torch.tensor([[1, 400, 30, 77, 8, 300, 12, 5]])


def _logits(path: Path) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    with torch.no_grad():
        return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()(TOKENS).logits


def test_rotation_keeps_the_function_and_changes_every_matrix(tmp_path: Path) -> None:
    parent = synth_model_path("stories260k")
    path, q = st.rotate_residual(parent, tmp_path / "rot", seed=3, dtype=torch.float32)
    with torch.no_grad():
        want = load_synth_model("stories260k")(TOKENS).logits
    got = _logits(path)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    assert torch.allclose(q.T @ q, torch.eye(q.shape[0], dtype=q.dtype), atol=1e-12)
    w = read_weights(path)
    assert "lm_head.weight" in w and all((v == 1).all() for k, v in w.items() if k.endswith("norm.weight"))
    before = read_weights(parent)
    assert not torch.allclose(w["model.embed_tokens.weight"].float(), before["model.embed_tokens.weight"].float(), atol=1e-2)


def test_shape_changing_builders(tmp_path: Path) -> None:
    parent = synth_model_path("stories260k")
    checks = {
        st.resize_vocabulary(parent, tmp_path / "v", 576): {"token_embd.weight": (576, 64)},
        st.prune_width(parent, tmp_path / "w", 100): {"blk.0.ffn_up.weight": (100, 64), "blk.4.ffn_down.weight": (64, 100)},
        st.convert_gqa(parent, tmp_path / "g", 2): {"blk.0.attn_k.weight": (16, 64), "blk.3.attn_v.weight": (16, 64)},
        st.passthrough([(parent, 0, 4), (parent, 1, 5)], tmp_path / "u"): {"blk.7.ffn_up.weight": (172, 64)},
    }
    for path, shapes in checks.items():
        with open_checkpoint(path) as ckpt:
            for name, shape in shapes.items():
                assert ckpt.info(name).shape == shape, (path, name)
    # the pruned model keeps its largest units and still runs
    assert _logits(tmp_path / "w").shape == (1, TOKENS.shape[1], 512)
    # passthrough copies layers byte for byte
    up, ref = read_weights(tmp_path / "u"), read_weights(parent)
    assert torch.equal(up["model.layers.4.mlp.up_proj.weight"], ref["model.layers.1.mlp.up_proj.weight"])
