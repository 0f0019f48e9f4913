"""``quantize_model``: write a GGUF quantized the way ``llama_model_quantize`` would.

Reads any checkpoint :func:`provenance.formats.open_checkpoint` opens (canonical GGUF
names and layout; HF q/k rows already permuted to llama.cpp's order), picks each
tensor's type with llama.cpp's recipe (:mod:`provenance.quant.quantize_mix`) and
quantizes it with the bit-exact reference quantizers (:mod:`provenance.codecs.quantize_ref`),
one chunk of rows at a time through the package's one model writer
(:func:`provenance.formats.write.write_checkpoint`: atomic, streamed).

Layout follows llama.cpp so that, from a GGUF source, the *whole file* comes out as
llama.cpp writes it: tensors in ``weight_name_comparer`` order; the source's KVs in
their order minus ``general.file_type`` / ``general.quantization_version`` / ``split.*``,
then ``general.quantization_version = 2`` and ``general.file_type`` appended (llama.cpp's
``gguf_set_val`` removes and re-appends a key).

What the quantizer sees is the source's values converted to float32 exactly (f16/bf16
widen exactly). llama.cpp behaves the same on a GGUF source; an HF bf16 checkpoint that
llama.cpp users first convert with ``--outtype f16`` would instead be quantized from
f16-rounded values, so results differ from that two-step path wherever the f16 rounding
changed a value.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from provenance.codecs.quantize_ref import can_quantize
from provenance.codecs.types import type_info
from provenance.errors import UsageProblem
from provenance.formats import open_checkpoint
from provenance.formats.base import Checkpoint
from provenance.formats.gguf_header import GGUFKeyValue, ValueType
from provenance.formats.write import write_checkpoint
from provenance.progress import Meter, ProgressCallback
from provenance.quant.quantize_mix import (
    MixModel,
    TensorSpec,
    parse_ftype,
    tensor_types,
)
from provenance.threads import torch_threads

QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION

_RE_ADDED_KEYS = ("general.quantization_version", "general.file_type")
"""Not carried over from the source: llama.cpp re-adds these two at the end (see quantize_model)."""


@dataclass
class QuantizeReport:
    """What :func:`quantize_model` wrote."""

    path: str
    ftype: str
    types: dict[str, str] = field(default_factory=dict)
    """Tensor name -> ggml type written, in file order."""
    n_quantized: int = 0
    n_copied: int = 0


def mix_model(ckpt: Checkpoint) -> MixModel:
    """The model facts llama.cpp's recipe needs, from the checkpoint's ArchRecord."""
    a = ckpt.architecture
    n_head = a.n_head or 1
    n_layer = a.n_layer
    if n_layer is None:
        layers = [i.layer for i in ckpt.tensors.values() if i.layer is not None]
        n_layer = max(layers) + 1 if layers else 0
    return MixModel(arch=a.arch or "llama", n_layer=n_layer, n_head=n_head,
                    n_head_kv=a.n_head_kv or n_head, n_expert=a.n_expert or 0)


def _specs(ckpt: Checkpoint) -> list[TensorSpec]:
    is_gguf = ckpt.format.startswith("gguf")
    # Non-GGUF sources: what llama.cpp's converter would have stored for tensors the
    # recipe leaves alone is F32 (norms, biases), so that is their "source type".
    return [TensorSpec(name, info.shape, info.dtype if is_gguf else "F32") for name, info in ckpt.tensors.items()]


def quantize_model(src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], ftype: str,
                   allow_requantize: bool = False, *, threads: int | None = None,
                   progress: ProgressCallback | None = None) -> QuantizeReport:
    """Write ``dst_path``: ``src_path`` quantized to llama.cpp file type ``ftype``
    (``"Q4_K_M"``, ``"Q8_0"``, ``"Q6_K"`` ..., or ``"f16"`` / ``"f32"`` for plain
    conversions), per llama.cpp's type recipe, bit-exact with ``llama_model_quantize``
    without an importance matrix for every type :func:`quantize_rows` supports.

    A tensor whose chosen type equals its stored type is copied byte for byte; an
    already-quantized source tensor is re-quantized only with ``allow_requantize``
    (llama.cpp refuses by default as well). Everything is checked before the first byte is
    written, and the output appears whole or not at all (Ctrl-C included). The quantizers
    run on ``threads`` threads (default: ``torch.get_num_threads()``); ``progress`` gets
    the source bytes consumed (task ``quantize``).
    """
    ft = parse_ftype(ftype)
    with open_checkpoint(src_path) as ckpt:
        is_gguf = ckpt.format.startswith("gguf")
        types = tensor_types(_specs(ckpt), ft, mix_model(ckpt))
        for name, target in types.items():
            info = ckpt.info(name)
            if is_gguf and info.quantized and info.dtype != target and not allow_requantize:
                raise UsageProblem(f"{name}: requantizing from {info.dtype} to {target} is disabled (allow_requantize=False)")
            if info.dtype != target and not can_quantize(target):
                raise UsageProblem(f"{ft.name.removeprefix('MOSTLY_')} needs {target} for {name}, which provenance cannot "
                                   f"write bit-exactly (supported: {', '.join(supported_ftypes())})")
        meter = Meter(progress, "quantize", sum(ckpt.info(n).n_bytes for n in types))
        with torch_threads(threads):
            written = write_checkpoint(
                ckpt, dst_path, retype=types, to="gguf", tensors=list(types), drop_keys=_RE_ADDED_KEYS,
                add_keys=[GGUFKeyValue("general.quantization_version", QUANTIZATION_VERSION, ValueType.UINT32),
                          GGUFKeyValue("general.file_type", int(ft), ValueType.UINT32)],
                progress=meter.advance if progress is not None else None,
            )
    quantized = [n for n in written.retyped if type_info(types[n]).block_size > 1]
    return QuantizeReport(path=os.fspath(dst_path), ftype=ft.name, types=types,
                          n_quantized=len(quantized), n_copied=len(written.copied))


def supported_ftypes() -> list[str]:
    """llama.cpp file types whose base type provenance writes bit-exactly (a model's mix
    may still need another type for some tensor: :func:`quantize_model` checks first)."""
    from gguf import LlamaFileType

    from provenance.quant.quantize_mix import default_type

    out = []
    for ft in LlamaFileType:
        try:
            base = default_type(ft)
        except KeyError:
            continue
        if can_quantize(base):
            out.append(ft.name.removeprefix("MOSTLY_"))
    return out
