"""``provenance quantize``: quantize a model the way ``llama-quantize`` does, byte for byte."""
from __future__ import annotations

import os
from typing import Any

import click

from provenance.commands.common import ExitCode, say
from provenance.commands.options import build, options_from
from provenance.commands.progress import progress_display
from provenance.errors import UsageProblem
from provenance.quant.options import QuantizeOptions


@click.command("quantize")
@click.argument("source", type=click.Path(dir_okay=True))
@click.argument("output", type=click.Path(dir_okay=False))
@options_from(QuantizeOptions)
def command(source: str, output: str, **options: Any) -> ExitCode:
    """Quantize SOURCE (GGUF, safetensors, HF directory) into the GGUF file OUTPUT.

    Per-tensor types follow llama.cpp's recipe for --type (Q4_K_M keeps attn_v and half of
    ffn_down in Q6_K, ...) and every byte is what llama.cpp's llama-quantize (no importance
    matrix) writes. Streams tensor by tensor with bounded memory; progress on stderr; the
    output appears whole or not at all (Ctrl-C leaves nothing behind). Exit status: 0
    written, 2 unreadable input, 64 a --type this model cannot be written in.
    """
    from provenance.quant.writer import quantize_model

    opts = build(QuantizeOptions, options)
    if os.path.exists(output) and os.path.samefile(source, output):
        raise UsageProblem(f"{output}: the output would replace its own source")
    with progress_display() as progress:
        report = quantize_model(source, output, opts.ftype, opts.allow_requantize, threads=opts.threads,
                                progress=progress)
    say(f"wrote {output}: {report.ftype.removeprefix('MOSTLY_')}, {report.n_quantized} tensors quantized, "
        f"{report.n_copied} copied, {len(report.types) - report.n_quantized - report.n_copied} converted")
    return ExitCode.OK
