"""Dequantization throughput of the packed layouts against each ecosystem's own CPU
dequantizer, on the same tensors in the same run.

One 4096 x 4096 weight (a 7B attention matrix) per layout, random codes, fp16 scales
(float32 where the format keeps them so), no act-order:

* GPTQ 4-bit g128 vs auto-round's torch ``QuantLinear.forward`` on one input row: its
  unpack, zero and scale (GPTQModel, whose torch kernel this is, does not install here: it
  needs torch >= 2.14.1), plus a one-row product, timed apart in the ``gemv`` line;
* AWQ GEMM 4-bit g128 vs AutoAWQ's ``dequantize_gemm`` (fp16 out, its native format);
* bitsandbytes NF4, blocksize 64, double quantization, vs ``dequantize_4bit`` (CPU backend);
* LLM.int8 vs ``int8_vectorwise_dequant``;
* compressed-tensors pack-quantized int4 g128 and fp8 per channel vs their compressors'
  ``decompress``;
* MLX affine 4-bit g64 vs ``mx.dequantize`` (evaluated).

"ours" is the codec call the reader makes per chunk (:mod:`provenance.codecs.packed`, the
compiled kernels) into a reused float32 buffer; "read" is the whole path from a
safetensors file in the page cache through :class:`provenance.formats.packed_read.PackedRowReader`
(parts read into reused buffers, 32-row chunks). Each figure is output GB/s (float32
bytes; theirs at its own output dtype's element count x 4 bytes), median of 5 runs, with
torch (and our kernels) on 1 and on 2 threads. ``same`` says whether our values equal
theirs bit for bit on these tensors (GPTQ: checked on the forward of the identity in the
tests instead).

    python benchmarks/bench_packed.py
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from provenance.codecs.packed import awq, bnb, compressed, gptq, mlx
from provenance.formats import open_checkpoint

N = 4096
GROUP = 128
GIB = N * N * 4 / 1e9
MODULE = "model.layers.0.self_attn.o_proj"


def _time(fn: Callable[[], Any]) -> float:
    fn()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def _words(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31 - 1, (rows, cols), dtype=torch.int32, generator=gen)


def _streamed(directory: Path, parts: dict[str, torch.Tensor], quantization: dict[str, Any]) -> Callable[[], None]:
    """Our whole read path: the parts saved as a checkpoint, every row streamed."""
    directory.mkdir()
    save_file({f"{MODULE}.{k}": v.contiguous() for k, v in parts.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"quantization_config": quantization}))
    ckpt = open_checkpoint(directory)
    name = f"{MODULE}.weight"

    def read() -> None:
        with ckpt.row_reader(name, 32) as reader:
            for a in range(0, N, 32):
                reader.read(a, a + 32)
    return read


class Case:
    def __init__(self, name: str, ours: Callable[[], torch.Tensor], theirs: Callable[[], Any], what: str,
                 compare: Callable[[torch.Tensor, Any], bool] | None = None, read: Callable[[], None] | None = None) -> None:
        self.name, self.ours, self.theirs, self.what, self.compare, self.read = name, ours, theirs, what, compare, read


def _cases(tmp: Path) -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    out = torch.empty(N, N)
    scales = (torch.rand((N // GROUP, N), generator=gen) * 0.01).half()
    cases = []

    # GPTQ: auto-round's torch QuantLinear (GPTQModel's torch kernel)
    from auto_round_extension.torch.qlinear_torch_zp import QuantLinear
    gq, gz = _words(N // 8, N, gen), _words(N // GROUP, N // 8, gen)
    g_idx = torch.arange(N, dtype=torch.int32) // GROUP
    layer = QuantLinear(4, GROUP, N, N, bias=False, g_idx=True)
    layer.qweight, layer.qzeros, layer.scales = gq, gz, scales
    delattr(layer, "g_idx")  # without act-order: its repeat_interleave branch
    row = torch.randn(1, N, generator=gen)  # float32: its weights are cast to float32, as ours are
    cases.append(Case("GPTQ-4b-g128", lambda: gptq.gptq_into(gq, gz, 0, scales, g_idx, 4, 1, out), lambda: layer(row),
                      "auto-round QuantLinear.forward, 1 row", read=_streamed(
                          tmp / "gptq", {"qweight": gq, "qzeros": gz, "scales": scales, "g_idx": g_idx},
                          {"quant_method": "gptq", "bits": 4, "group_size": GROUP})))
    dense = torch.randn(N, N, generator=gen)
    cases.append(Case("  (gemv in that forward)", lambda: out, lambda: row @ dense, "the one-row product alone"))

    # AWQ: AutoAWQ's own dequantize_gemm
    from awq.utils.packing_utils import dequantize_gemm
    aq, az = _words(N, N // 8, gen), _words(N // GROUP, N // 8, gen)
    cases.append(Case("AWQ-4b-g128", lambda: awq.awq_into(aq, az, scales, GROUP, 0, out),
                      lambda: dequantize_gemm(aq, az, scales, 4, GROUP), "AutoAWQ dequantize_gemm",
                      lambda o, t: torch.equal(o, t.t().float()), _streamed(
                          tmp / "awq", {"qweight": aq, "qzeros": az, "scales": scales},
                          {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm"})))

    # bitsandbytes NF4 with double quantization, and LLM.int8
    import bitsandbytes.functional as F
    w = torch.randn(N, N, generator=gen)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    nested = state.state2

    def ours_nf4() -> torch.Tensor:
        absmax = bnb.nested_absmax(state.absmax, nested.code, nested.absmax, nested.blocksize, float(state.offset), 0)
        return bnb.nf4_into(packed.view(-1), absmax, state.code, 64, 0, torch.float32, out)
    nf4_parts = {"weight": packed, **{f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}}
    cases.append(Case("BNB-nf4 (double quant)", ours_nf4, lambda: F.dequantize_4bit(packed, state),
                      "bitsandbytes dequantize_4bit", torch.equal, _streamed(tmp / "nf4", nf4_parts, {
                          "quant_method": "bitsandbytes", "load_in_4bit": True})))
    codes = torch.randint(-127, 128, (N, N), dtype=torch.int8, generator=gen)
    scb = torch.rand(N, generator=gen) * 3
    cases.append(Case("BNB-int8", lambda: bnb.int8_into(codes, scb, out), lambda: F.int8_vectorwise_dequant(codes, scb),
                      "bitsandbytes int8_vectorwise_dequant", torch.equal))

    # compressed-tensors pack-quantized int4 (symmetric, group 128) and fp8 per channel
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    ct_words, ct_scale = _words(N, N // 8, gen), scales.t().contiguous()
    groups = torch.arange(N) // GROUP
    int4 = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=4, strategy="group", group_size=GROUP))
    state_dict = {"weight_packed": ct_words, "weight_scale": ct_scale, "weight_shape": torch.tensor([N, N])}
    pack = BaseCompressor.load_from_registry("pack-quantized")
    cases.append(Case("CT-int-4b-g128", lambda: compressed.packed_int_into(ct_words, N, 4, ct_scale, None, 0, groups, out),
                      lambda: pack.decompress(state_dict, int4)["weight"], "compressed-tensors decompress",
                      lambda o, t: torch.equal(o, t.float())))
    fp8_codes = torch.randint(0, 256, (N, N), dtype=torch.uint8, generator=gen)
    fp8_codes[(fp8_codes & 0x7F) == 0x7F] = 0  # no NaN codes: equal values compare equal
    fp8_scale = (torch.rand((N, 1), generator=gen) * 0.01).half()
    channels = torch.zeros(N, dtype=torch.int64)
    fp8 = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=8, type="float", strategy="channel"))
    fp8_state = {"weight": fp8_codes.view(torch.float8_e4m3fn), "weight_scale": fp8_scale}
    floats = BaseCompressor.load_from_registry("float-quantized")
    cases.append(Case("CT-fp8", lambda: compressed.fp8_into(fp8_codes, fp8_scale, channels, out),
                      lambda: floats.decompress(fp8_state, fp8)["weight"], "compressed-tensors decompress",
                      lambda o, t: torch.equal(o, t.float())))

    # MLX affine 4-bit, group 64
    import mlx.core as mx
    import numpy as np
    m_words = _words(N, N // 8, gen).view(torch.uint32)
    m_scales = (torch.rand((N, N // 64), generator=gen) * 0.01).half()
    m_biases = (torch.randn((N, N // 64), generator=gen) * 0.01).half()
    mq, ms, mb = mx.array(m_words.numpy()), mx.array(m_scales.numpy()), mx.array(m_biases.numpy())

    def theirs_mlx() -> Any:
        w = mx.dequantize(mq, ms, mb, group_size=64, bits=4)
        mx.eval(w)
        return w
    cases.append(Case("MLX-4b-g64", lambda: mlx.mlx_into(m_words, m_scales, m_biases, 4, 64, out), theirs_mlx,
                      "mlx.core.dequantize (CPU)",
                      lambda o, t: torch.equal(o, torch.from_numpy(np.array(t.astype(mx.float32))))))
    return cases


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cases = _cases(Path(tmp))
        print(f"{'layout':26s} {'thr':>3s} {'ours GB/s':>10s} {'read GB/s':>10s} {'theirs GB/s':>12s} "
              f"{'ours/theirs':>12s} {'same':>5s}  baseline")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for case in cases:
                theirs_s = _time(case.theirs)
                if case.name.startswith(" "):
                    print(f"{case.name:26s} {threads:3d} {'':>10s} {'':>10s} {GIB / theirs_s:12.2f} {'':>12s} {'':>5s}  "
                          f"{case.what} ({theirs_s * 1e3:.1f} ms)")
                    continue
                ours_s = _time(case.ours)
                read = f"{GIB / _time(case.read):10.2f}" if case.read else f"{'':>10s}"
                same = "" if case.compare is None else ("yes" if case.compare(case.ours(), case.theirs()) else "NO")
                print(f"{case.name:26s} {threads:3d} {GIB / ours_s:10.2f} {read} {GIB / theirs_s:12.2f} "
                      f"{theirs_s / ours_s:12.2f} {same:>5s}  {case.what}")


if __name__ == "__main__":
    main()
