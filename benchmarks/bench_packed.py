"""Dequantization throughput of the packed layouts against each ecosystem's own
dequantizer, on the same tensors in the same run.

One 4096 x 4096 weight (a 7B attention matrix) per layout, random codes and scales:

* AWQ GEMM 4-bit g128: ours (:func:`provenance.codecs.packed.awq.awq_rows`) vs auto-round's
  ``dequantize_gemm`` (AutoAWQ's function, same code);
* GPTQ 4-bit g128: ours vs auto-round's torch ``QuantLinear`` unpack+scale (GPTQModel, whose
  torch kernel this is, does not install here: it needs torch >= 2.14.1);
* bitsandbytes NF4 (blocksize 64, double quantization): ours vs
  ``bitsandbytes.functional.dequantize_4bit`` (CPU backend);
* compressed-tensors int4 g128: ours vs ``PackedQuantizationCompressor.decompress``.

Prints output GB/s (float32 bytes written) of each and the ratio ours / theirs (median of
5 runs; single torch thread so other jobs on a shared machine disturb it less).

    python benchmarks/bench_packed.py
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from provenance.codecs.packed import awq, bnb, compressed, gptq

N = 4096
GROUP = 128


def _time(fn: Callable[[], torch.Tensor]) -> float:
    fn()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def _words(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31 - 1, (rows, cols), dtype=torch.int32, generator=gen)


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    scales = (torch.rand((N // GROUP, N), generator=gen) * 0.01).half()
    gib = N * N * 4 / 1e9
    rows = []

    qweight, qzeros = _words(N, N // 8, gen), _words(N // GROUP, N // 8, gen)
    from auto_round.export.export_to_awq.utils import dequantize_gemm
    ours = _time(lambda: awq.awq_rows(qweight, qzeros, scales, GROUP).values())
    theirs = _time(lambda: dequantize_gemm(qweight, qzeros, scales, 4, GROUP).float())
    rows.append(("AWQ-4b-g128", ours, theirs, "auto-round dequantize_gemm (AutoAWQ's)"))

    gq, gz = _words(N // 8, N, gen), _words(N // GROUP, N // 8, gen)
    g_idx = torch.arange(N, dtype=torch.int32) // GROUP
    from auto_round_extension.torch.qlinear_torch_zp import QuantLinear
    layer = QuantLinear(4, GROUP, N, N, bias=False, g_idx=True)
    layer.qweight, layer.qzeros, layer.scales = gq, gz, scales
    delattr(layer, "g_idx")

    def theirs_gptq() -> torch.Tensor:  # its forward's unpack and scale, without the matmul
        w = torch.bitwise_and(torch.bitwise_right_shift(gq.unsqueeze(1).expand(-1, 8, -1), layer.wf.unsqueeze(-1)), 15)
        z = torch.bitwise_and(torch.bitwise_right_shift(gz.unsqueeze(2).expand(-1, -1, 8), layer.wf.unsqueeze(0)), 15)
        z = z.reshape(scales.shape) + 1
        w = w.reshape(N, N)
        return (scales.repeat_interleave(GROUP, 0) * (w - z.repeat_interleave(GROUP, 0))).float()
    ours = _time(lambda: gptq.gptq_rows(gq, gz, 0, scales, g_idx, 4, 1).values())
    rows.append(("GPTQ-4b-g128", ours, _time(theirs_gptq), "auto-round torch QuantLinear's unpack+scale"))

    import bitsandbytes.functional as F
    w = torch.randn(N, N, generator=gen)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    nested = state.state2
    raw_absmax = state.absmax

    def ours_nf4() -> torch.Tensor:
        absmax = bnb.nested_absmax(raw_absmax, nested.code, nested.absmax, nested.blocksize, float(state.offset), 0)
        return bnb.nf4_rows(packed.view(-1), absmax, state.code, 64, 0, N, torch.float32).values()
    rows.append(("BNB-nf4 (double quant)", _time(ours_nf4), _time(lambda: F.dequantize_4bit(packed, state)),
                 "bitsandbytes dequantize_4bit (CPU)"))

    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    ct_words = _words(N, N // 8, gen)
    ct_scale = scales.t().contiguous()
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=4, strategy="group", group_size=GROUP))
    state_dict = {"weight_packed": ct_words, "weight_scale": ct_scale, "weight_shape": torch.tensor([N, N])}
    groups = torch.arange(N) // GROUP
    rows.append(("CT-int-4b-g128", _time(lambda: compressed.packed_int_rows(ct_words, N, 4, ct_scale, None, 0, groups).values()),
                 _time(lambda: PackedQuantizationCompressor.decompress(state_dict, scheme)["weight"].float()),
                 "compressed-tensors decompress"))

    print(f"{'layout':26s} {'ours GB/s':>10s} {'theirs GB/s':>12s} {'ours/theirs':>12s}  baseline")
    for name, ours_s, theirs_s, what in rows:
        print(f"{name:26s} {gib / ours_s:10.2f} {gib / theirs_s:12.2f} {theirs_s / ours_s:12.2f}  {what}")


if __name__ == "__main__":
    main()
