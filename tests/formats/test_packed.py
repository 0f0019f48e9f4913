"""Quantized safetensors layouts written by their real writers, read back and dequantized
bit for bit like each ecosystem's own dequantizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from provenance.formats import open_checkpoint
from provenance.names.qk_permute import llama_qk_row_order
from tests.support import packed_writers as pw
from tests.support.packed_writers import LABELS, WRITERS, packed_source, written

__all__ = ["packed_source"]  # a fixture

def _stored(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def _ecosystem(kind: str, directory: Path, module: str, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight as the layout's own library dequantizes it, ``(out, in)`` float32."""
    cfg = pw.config_of(directory).get("quantization_config") or {}
    if kind.startswith("gptq"):
        from auto_round_extension.torch.qlinear_torch_zp import QuantLinear

        qw = t[f"{module}.qweight"]
        n_in, n_out = qw.shape[0] * 32 // cfg["bits"], qw.shape[1]
        layer = QuantLinear(cfg["bits"], cfg["group_size"], n_in, n_out, bias=False, g_idx=True)
        for part in ("qweight", "qzeros", "scales"):
            setattr(layer, part, t[f"{module}.{part}"])
        # its g_idx branch slices outputs by the input count (right only for square layers):
        # without act-order g_idx is i // group_size, which the branch without it computes
        assert torch.equal(t[f"{module}.g_idx"].long(), torch.arange(n_in) // cfg["group_size"])
        delattr(layer, "g_idx")
        return layer(torch.eye(n_in, dtype=torch.float16)).t().float()
    if kind.startswith("awq"):
        from awq.utils.packing_utils import dequantize_gemm  # AutoAWQ's own

        return dequantize_gemm(t[f"{module}.qweight"], t[f"{module}.qzeros"], t[f"{module}.scales"], 4,
                               cfg["group_size"]).t().float()
    if kind.startswith("ct"):
        from compressed_tensors.compressors import BaseCompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        weights = next(iter(cfg["config_groups"].values()))["weights"]
        scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
        state = {k.split(".")[-1]: v for k, v in t.items() if k.startswith(module + ".")}
        return BaseCompressor.load_from_registry(cfg["format"]).decompress(state, scheme)["weight"].float()
    if kind.startswith("bnb"):
        import bitsandbytes.functional as F

        if kind == "bnb-int8":
            return F.int8_vectorwise_dequant(t[f"{module}.weight"], t[f"{module}.SCB"]).float()
        qs = {k[len(module) + len(".weight."):]: v for k, v in t.items() if k.startswith(f"{module}.weight.")}
        state = F.QuantState.from_dict(qs, device=torch.device("cpu"))
        return F.dequantize_4bit(t[f"{module}.weight"], state).float()
    import mlx.core as mx

    q = mx.array(t[f"{module}.weight"].numpy())
    s, b = (mx.array(t[f"{module}.{p}"].float().numpy()) for p in ("scales", "biases"))
    dtype = mx.float16 if t[f"{module}.scales"].dtype == torch.float16 else mx.float32
    mcfg = pw.config_of(directory)["quantization"]
    w = mx.dequantize(q, s.astype(dtype), b.astype(dtype), group_size=mcfg["group_size"], bits=mcfg["bits"])
    return torch.from_numpy(np.array(w.astype(mx.float32)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(WRITERS))
def test_real_writer_read_back_bit_exact(kind: str, packed_source: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = written(kind, packed_source, tmp_path_factory)
    stored = _stored(directory)
    with open_checkpoint(directory) as ckpt, open_checkpoint(packed_source) as ref:
        # every linear but lm_head; mlx_lm also quantizes lm_head and the embedding
        packed = {name: info for name, info in ckpt.tensors.items() if info.packing is not None}
        assert len(packed) == (16 if kind.startswith("mlx") else 14), sorted(packed)
        for name, info in packed.items():
            assert info.packing is not None and info.dtype == LABELS[kind]
            if name in ref.tensors:
                assert info.shape == ref.info(name).shape
            ours = torch.from_numpy(ckpt.read_rows(name))  # canonical rows: HF q/k rows in llama.cpp's order
            theirs = _ecosystem(kind, directory, info.packing.module, stored)
            if info.qk_heads is not None:
                theirs = theirs[torch.from_numpy(llama_qk_row_order(info.n_rows, info.qk_heads))]
            assert ours.shape == theirs.shape
            assert torch.equal(ours, theirs), f"{name}: {int((ours != theirs).sum())} values differ"
        # canonical rows (q/k permuted like llama.cpp) stay close to the fp source; AutoAWQ's
        # scale search also rescales input channels (folded into the layer before), so its
        # weights are further from the source's than its rounding alone (docs/formats.md)
        bound = {"ct-fp8": 0.05, "awq-autoawq": 0.3}.get(kind, 0.02 if "8b" in LABELS[kind] or kind == "bnb-int8" else 0.15)
        for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight"):
            a, b = ckpt.read(name), ref.read(name)
            rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
            assert rel < bound, (name, rel)


@pytest.mark.slow
def test_chunks_agree_with_whole_reads(packed_source: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    for kind in ("gptq", "awq", "bnb-nf4", "ct-pack"):
        directory = written(kind, packed_source, tmp_path_factory)
        with open_checkpoint(directory) as ckpt:
            for name in ("blk.0.attn_k.weight", "blk.0.ffn_up.weight"):
                whole = ckpt.read_rows(name)
                parts = np.concatenate([ckpt.read_rows(name, a, min(a + 13, whole.shape[0]))
                                        for a in range(0, whole.shape[0], 13)])
                assert np.array_equal(whole, parts), (kind, name)
                assert sum(len(c) for c in ckpt.iter_raw(name)) == ckpt.info(name).n_bytes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gptq", "awq", "ct-pack", "ct-fp8", "bnb-nf4", "bnb-int8", "mlx"])
def test_the_check_gate_reads_packed_weights(kind: str, packed_source: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """``check`` reads what the commands read: a packed weight's rows and its codes and grid
    (it has no stored rows), so a layout that opens also passes the gate."""
    from provenance.formats.verify import verify_readable

    with open_checkpoint(written(kind, packed_source, tmp_path_factory)) as ckpt:
        n_packed = sum(info.packing is not None for info in ckpt.tensors.values())
        assert n_packed >= 14
        done = verify_readable(ckpt)
        assert done.tensors == len(ckpt.tensors)
        assert done.rows >= 2 * n_packed
