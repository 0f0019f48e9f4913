"""Quantized safetensors layouts: which stored tensors make up one logical weight.

GPTQ, AWQ, compressed-tensors, bitsandbytes and MLX checkpoints store each quantized
linear weight as several tensors (``qweight/qzeros/scales/g_idx``,
``weight_packed/weight_scale[/weight_zero_point]``, ``weight/.absmax/.quant_map/
.quant_state.*``, ``weight/scales/biases`` ...). This module recognises the layout from
``config.json`` (``quantization_config``, or MLX's ``quantization``) and the tensor names,
groups the parts of each module into one :class:`PackedTensor` with the weight's true
``out x in`` shape, and validates every part's dtype and shape against the others and
against the declared bits and group size *before* anything is read. The packing math is
in :mod:`provenance.codecs.packed`; reading rows is :mod:`provenance.formats.packed_read`.
The JSON it reads is validated before it gets here: ``config.json`` by the schema layer
(:data:`provenance.formats.documents.QUANTIZATION_CONFIG`: types and ranges), a
bitsandbytes quant state by :data:`provenance.formats.documents.BNB_QUANT_STATE`; this
module checks what a schema cannot (supported values, agreement between the parts).
Formats and their byte layouts: ``docs/formats.md``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from provenance.errors import MalformedCheckpoint, UnsupportedCheckpoint
from provenance.formats.documents import BNB_QUANT_STATE
from provenance.formats.schema import parse_document

if TYPE_CHECKING:
    from provenance.formats.base import Checkpoint

FLOAT_DTYPES = ("F16", "BF16", "F32")
MAX_QUANT_STATE_BYTES = 4096
BNB_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
MAX_GROUP_SIZE = 1 << 16

# Part suffixes of each layout, after the module path (``model.layers.0.self_attn.q_proj``).
GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
CT_PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")
BNB4_PARTS = ("weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map")
BNB4_STATES = ("weight.quant_state.bitsandbytes__nf4", "weight.quant_state.bitsandbytes__fp4")
MLX_PARTS = ("scales", "biases")


@dataclass(frozen=True)
class Part:
    """One stored tensor of a packed weight (validated header facts only)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class PackedTensor:
    """One quantized linear weight made of stored parts, with its layout's parameters."""

    layout: str
    """``gptq``, ``awq``, ``ct-pack``, ``ct-int``, ``ct-fp8``, ``bnb-4bit``, ``bnb-int8`` or ``mlx``"""
    module: str
    """the module path the parts share (the logical weight is ``module + '.weight'``)"""
    shape: tuple[int, int]
    """the weight's true ``(out, in)``"""
    bits: int
    group_size: int
    """input columns per scale group (``in`` for one group per row, 1 for bnb-int8 rows)"""
    parts: Mapping[str, Part]
    """role (``qweight``, ``scales``, ...) -> stored tensor"""
    params: Mapping[str, Any] = field(default_factory=dict)
    """layout extras: GPTQ ``zero_offset``; bnb ``quant_type, blocksize, dtype, nested_*``"""

    @property
    def dtype_label(self) -> str:
        """Short storage type for tables: ``GPTQ-4b-g128``, ``BNB-nf4``, ``CT-fp8`` ..."""
        if self.layout == "bnb-4bit":
            return f"BNB-{self.params['quant_type']}"
        if self.layout == "bnb-int8":
            return "BNB-int8"
        if self.layout == "ct-fp8":
            return "CT-fp8"
        name = {"gptq": "GPTQ", "awq": "AWQ", "ct-pack": "CT-int", "ct-int": "CT-int", "mlx": "MLX"}[self.layout]
        group = "" if self.group_size == self.shape[1] else f"-g{self.group_size}"
        return f"{name}-{self.bits}b{group}"

    @property
    def n_bytes(self) -> int:
        return sum(p.n_bytes for p in self.parts.values())

    @property
    def rounds_to_nearest(self) -> bool:
        """Does the writer round each weight to the nearest level of the stored grid? GPTQ's
        error feedback and AWQ's activation-aware search move codes on purpose; the others
        are round-to-nearest (whatever chose their scales)."""
        return self.layout not in ("gptq", "awq", "ct-pack")


class Layout:
    """The checkpoint-wide quantization facts read from ``config.json``."""

    def __init__(self, method: str, config: Mapping[str, Any], source: str) -> None:
        self.method, self.config, self.source = method, config, source


def _bad(source: str, message: str, fld: str) -> MalformedCheckpoint:
    return MalformedCheckpoint(source, message, field=fld)


def _int_in(value: int | None, lo: int, hi: int, source: str, fld: str) -> int:
    """A validated (integer or null) config value within what this reader supports."""
    if value is None or not lo <= value <= hi:
        raise _bad(source, f"{value!r} is not an integer in [{lo}, {hi}]", fld)
    return value


def quantization_layout(config: Mapping[str, Any], config_path: str, file_metadata: Mapping[str, str]) -> Layout | None:
    """The quantization method a checkpoint declares, or None for a plain one (``config`` is
    validated: both objects are objects or absent)."""
    qc = config.get("quantization_config")
    mlx = config.get("quantization")
    if qc is not None and not ("quant_method" not in qc and mlx is not None):
        # (mlx_lm copies its ``quantization`` object to ``quantization_config``, no quant_method)
        method = qc.get("quant_method")
        if method is None:
            raise _bad(config_path, "quantization_config has no quant_method string", "quantization_config.quant_method")
        return Layout(method.lower(), qc, config_path)
    if mlx is not None or file_metadata.get("format") == "mlx":
        if mlx is None:
            raise _bad(config_path, "an MLX checkpoint needs a quantization object in config.json", "quantization")
        return Layout("mlx", mlx, config_path)
    return None


def stored_part(specs: Mapping[str, tuple[str, Mapping[str, Any]]], name: str) -> Part | None:
    found = specs.get(name)
    if found is None:
        return None
    shard, spec = found
    return Part(name, spec["dtype"], tuple(spec["shape"]), shard, spec["begin"], spec["end"] - spec["begin"])


def _expect(part: Part | None, dtypes: tuple[str, ...], shape: tuple[int, ...] | None, what: str) -> Part:
    if part is None:
        raise MalformedCheckpoint(what, "missing part of a quantized weight", field=what)
    if part.dtype not in dtypes:
        raise MalformedCheckpoint(part.file, f"{part.name!r} is {part.dtype}, expected {'/'.join(dtypes)}", field=part.name)
    if shape is not None and part.shape != shape:
        raise MalformedCheckpoint(part.file, f"{part.name!r} has shape {list(part.shape)}, expected {list(shape)}",
                                  field=part.name)
    return part


def _two_d(part: Part) -> tuple[int, int]:
    if len(part.shape) != 2 or min(part.shape) <= 0:
        raise MalformedCheckpoint(part.file, f"{part.name!r} has shape {list(part.shape)}, expected 2 positive dims",
                                  field=part.name)
    return part.shape[0], part.shape[1]


def _groups(n_in: int, group_size: int) -> int:
    return 1 if group_size <= 0 else math.ceil(n_in / group_size)


# ----- GPTQ / AWQ ---------------------------------------------------------------------------
def _gptq_bits_group(layout: Layout, allowed_bits: tuple[int, ...]) -> tuple[int, int]:
    qc, src = layout.config, layout.source
    bits = qc.get("bits", qc.get("w_bit"))
    if bits not in allowed_bits:
        raise UnsupportedCheckpoint(src, f"{layout.method} with bits={bits!r} (supported: {allowed_bits})",
                                    field="quantization_config.bits")
    group = qc.get("group_size", qc.get("q_group_size", -1))
    group = _int_in(group, -1, MAX_GROUP_SIZE, src, "quantization_config.group_size")
    if group == 0:
        raise _bad(src, "group_size 0", "quantization_config.group_size")
    return bits, group


def gptq_tensor(layout: Layout, module: str, specs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> PackedTensor:
    bits, group = _gptq_bits_group(layout, (2, 4, 8))
    pf = 32 // bits
    qweight = _expect(stored_part(specs, f"{module}.qweight"), ("I32",), None, f"{module}.qweight")
    words_in, n_out = _two_d(qweight)
    n_in = words_in * pf
    n_groups = _groups(n_in, group)
    if n_out % pf:
        raise MalformedCheckpoint(qweight.file, f"{n_out} outputs do not pack into {bits}-bit zero words", field=qweight.name)
    scales = _expect(stored_part(specs, f"{module}.scales"), FLOAT_DTYPES, None, f"{module}.scales")
    if _two_d(scales)[1] != n_out:
        raise MalformedCheckpoint(scales.file, f"{scales.name!r} has {scales.shape[1]} columns for {n_out} outputs",
                                  field=scales.name)
    g_idx = stored_part(specs, f"{module}.g_idx")
    if g_idx is not None:
        _expect(g_idx, ("I32", "I64"), (n_in,), g_idx.name)
        n_groups = scales.shape[0]  # act-order: g_idx says which of the stored groups
        if group > 0 and n_groups != _groups(n_in, group):
            raise MalformedCheckpoint(scales.file, f"{scales.name!r} has {n_groups} groups, "
                                      f"group_size {group} over {n_in} inputs needs {_groups(n_in, group)}", field=scales.name)
    elif scales.shape[0] != n_groups:
        raise MalformedCheckpoint(scales.file, f"{scales.name!r} has {scales.shape[0]} groups, expected {n_groups}",
                                  field=scales.name)
    qzeros = _expect(stored_part(specs, f"{module}.qzeros"), ("I32",), (n_groups, n_out // pf), f"{module}.qzeros")
    fmt = layout.config.get("checkpoint_format", "gptq")
    zero_offset = 0 if fmt == "gptq_v2" else 1
    parts = {"qweight": qweight, "qzeros": qzeros, "scales": scales}
    if g_idx is not None:
        parts["g_idx"] = g_idx
    return PackedTensor("gptq", module, (n_out, n_in), bits, group if group > 0 else n_in, parts,
                        {"zero_offset": zero_offset, "n_groups": n_groups})


def awq_tensor(layout: Layout, module: str, specs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> PackedTensor:
    version = str(layout.config.get("version", "gemm")).lower()
    if version != "gemm":
        raise UnsupportedCheckpoint(layout.source, f"AWQ version {version!r} (supported: gemm)",
                                    field="quantization_config.version")
    bits, group = _gptq_bits_group(layout, (4,))
    qweight = _expect(stored_part(specs, f"{module}.qweight"), ("I32",), None, f"{module}.qweight")
    n_in, words_out = _two_d(qweight)
    n_out = words_out * 8
    if group <= 0:
        group = n_in
    if n_in % group:
        raise MalformedCheckpoint(qweight.file, f"{n_in} inputs are not whole groups of {group}", field=qweight.name)
    n_groups = n_in // group
    scales = _expect(stored_part(specs, f"{module}.scales"), FLOAT_DTYPES, (n_groups, n_out), f"{module}.scales")
    qzeros = _expect(stored_part(specs, f"{module}.qzeros"), ("I32",), (n_groups, words_out), f"{module}.qzeros")
    return PackedTensor("awq", module, (n_out, n_in), bits, group, {"qweight": qweight, "qzeros": qzeros, "scales": scales})


# ----- compressed-tensors ---------------------------------------------------------------------
def _ct_declared(layout: Layout) -> list[Mapping[str, Any]]:
    groups = layout.config.get("config_groups")
    if not groups:
        raise _bad(layout.source, "compressed-tensors config has no config_groups", "quantization_config.config_groups")
    out = []
    for key, group in groups.items():
        weights = group.get("weights") if group is not None else None
        if weights is None:
            raise _bad(layout.source, f"config group {key!r} has no weights object", f"config_groups.{key}.weights")
        out.append(weights)
    return out


def _ct_scale(specs: Mapping[str, tuple[str, Mapping[str, Any]]], module: str, n_out: int, n_in: int) -> tuple[Part, int]:
    scale = _expect(stored_part(specs, f"{module}.weight_scale"), FLOAT_DTYPES, None, f"{module}.weight_scale")
    if scale.shape in ((), (1,)):
        return scale, n_in
    if len(scale.shape) != 2 or scale.shape[0] != n_out or not 1 <= scale.shape[1] <= n_in:
        raise MalformedCheckpoint(scale.file, f"{scale.name!r} has shape {list(scale.shape)} for a {n_out}x{n_in} weight",
                                  field=scale.name)
    group = math.ceil(n_in / scale.shape[1])
    if math.ceil(n_in / group) != scale.shape[1]:
        raise MalformedCheckpoint(scale.file, f"{scale.shape[1]} scale groups do not tile {n_in} inputs", field=scale.name)
    return scale, group


def _ct_declares(declared: list[Mapping[str, Any]], kind: str, bits: int, group: int, n_in: int, source: str,
                 module: str) -> None:
    for weights in declared:
        gs = weights.get("group_size")
        strategy = weights.get("strategy")
        if weights.get("type") != kind or weights.get("num_bits") != bits:
            continue
        if (strategy == "group" and gs == group) or (strategy in ("channel", "tensor") and group == n_in):
            return
    raise MalformedCheckpoint(source, f"{module}: {kind}{bits} with group {group} matches no config group",
                              field="quantization_config.config_groups")


def ct_tensor(layout: Layout, module: str, specs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> PackedTensor:
    declared = _ct_declared(layout)
    packed = stored_part(specs, f"{module}.weight_packed")
    g_idx = stored_part(specs, f"{module}.weight_g_idx")
    if packed is not None:
        shape_part = _expect(stored_part(specs, f"{module}.weight_shape"), ("I32", "I64"), (2,), f"{module}.weight_shape")
        words = _expect(packed, ("I32",), None, packed.name)
        n_out, n_words = _two_d(words)
        # weight_shape's values are read (two integers) by the reader, which checks them
        # against these bounds: every width 1..8 must fit the words
        parts = {"weight_packed": words, "weight_shape": shape_part}
        return PackedTensor("ct-pack", module, (n_out, -1), 0, 0, parts,
                            {"declared": declared, "n_words": n_words, "g_idx": g_idx,
                             "zero": stored_part(specs, f"{module}.weight_zero_point"),
                             "scale": stored_part(specs, f"{module}.weight_scale")})
    weight = stored_part(specs, f"{module}.weight")
    assert weight is not None
    n_out, n_in = _two_d(weight)
    kind = "int" if weight.dtype == "I8" else "float"
    if weight.dtype not in ("I8", "F8_E4M3"):
        raise UnsupportedCheckpoint(weight.file, f"compressed-tensors weight of dtype {weight.dtype}", field=weight.name)
    scale, group = _ct_scale(specs, module, n_out, n_in)
    _ct_declares(declared, kind, 8, group, n_in, layout.source, module)
    zero = stored_part(specs, f"{module}.weight_zero_point")
    parts = {"weight": weight, "weight_scale": scale}
    if zero is not None:
        parts["weight_zero_point"] = _expect(zero, ("I8", "I32") + FLOAT_DTYPES, scale.shape, zero.name)
    if g_idx is not None:
        parts["weight_g_idx"] = _expect(g_idx, ("I32", "I64"), (n_in,), g_idx.name)
    return PackedTensor("ct-int" if kind == "int" else "ct-fp8", module, (n_out, n_in), 8, group, parts)


def ct_pack_finish(tensor: PackedTensor, shape: tuple[int, int]) -> PackedTensor:
    """A ``pack-quantized`` tensor once its ``weight_shape`` values are known: bits from the
    packed width, group from the scales, each checked against the stored parts."""
    n_out, n_in = shape
    words = tensor.parts["weight_packed"]
    if n_out != words.shape[0] or not 1 <= n_in <= words.shape[1] * 32:
        raise MalformedCheckpoint(words.file, f"weight_shape {list(shape)} does not fit {words.name!r} {list(words.shape)}",
                                  field=words.name)
    n_words = tensor.params["n_words"]
    bits = next((b for b in range(1, 9) if math.ceil(n_in * b / 32) == n_words), None)
    if bits is None:
        raise MalformedCheckpoint(words.file, f"{n_words} words per row fit no 1..8-bit packing of {n_in} inputs",
                                  field=words.name)
    scale = tensor.params["scale"]
    if scale is None:
        raise MalformedCheckpoint(words.file, f"{tensor.module}.weight_scale is missing", field=f"{tensor.module}.weight_scale")
    scale = _expect(scale, FLOAT_DTYPES, None, scale.name)
    specs = {scale.name: (scale.file, {"dtype": scale.dtype, "shape": list(scale.shape), "begin": scale.offset,
                                       "end": scale.offset + scale.n_bytes})}
    scale, group = _ct_scale(specs, tensor.module, n_out, n_in)
    _ct_declares(tensor.params["declared"], "int", bits, group, n_in, words.file, tensor.module)
    parts = {"weight_packed": words, "weight_scale": scale}
    zero = tensor.params["zero"]
    if zero is not None:
        parts["weight_zero_point"] = _expect(zero, ("I32",), (math.ceil(n_out * bits / 32), scale.shape[-1]), zero.name)
    g_idx = tensor.params["g_idx"]
    if g_idx is not None:
        parts["weight_g_idx"] = _expect(g_idx, ("I32", "I64"), (n_in,), g_idx.name)
    return PackedTensor("ct-pack", tensor.module, (n_out, n_in), bits, group, parts)


# ----- bitsandbytes ------------------------------------------------------------------------------
def bnb_state(raw: bytes, part: Part) -> dict[str, Any]:
    """The JSON quant state of a 4-bit weight, validated (:data:`BNB_QUANT_STATE`), with the
    block sizes bitsandbytes writes."""
    state = parse_document(raw, BNB_QUANT_STATE, part.file, part.name, base_offset=part.offset)
    for key in ("blocksize", "nested_blocksize"):
        if key in state and state[key] not in BNB_BLOCKSIZES:
            raise MalformedCheckpoint(part.file, f"{key} {state[key]!r} not one of {BNB_BLOCKSIZES}", field=part.name,
                                      offset=part.offset)
    out = {key: state[key] for key in ("quant_type", "blocksize", "dtype")}
    out["shape"] = (state["shape"][0], state["shape"][1])
    if "nested_blocksize" in state:
        if "nested_offset" not in state:
            raise MalformedCheckpoint(part.file, "a nested quant state needs nested_offset", field=part.name,
                                      offset=part.offset)
        out.update(nested_blocksize=state["nested_blocksize"], nested_offset=float(state["nested_offset"]))
    return out


def bnb4_tensor(module: str, specs: Mapping[str, tuple[str, Mapping[str, Any]]], state: Mapping[str, Any],
                state_part: Part) -> PackedTensor:
    n_out, n_in = state["shape"]
    n = n_out * n_in
    weight = _expect(stored_part(specs, f"{module}.weight"), ("U8",), None, f"{module}.weight")
    if math.prod(weight.shape) != math.ceil(n / 2):
        raise MalformedCheckpoint(weight.file, f"{weight.name!r} holds {math.prod(weight.shape)} bytes, "
                                  f"a {n_out}x{n_in} 4-bit weight needs {math.ceil(n / 2)}", field=weight.name)
    if n_in % 2:
        raise UnsupportedCheckpoint(weight.file, f"4-bit rows of odd length {n_in} share bytes", field=weight.name)
    n_blocks = math.ceil(n / state["blocksize"])
    quant_map = _expect(stored_part(specs, f"{module}.weight.quant_map"), ("F32",), (16,), f"{module}.weight.quant_map")
    parts = {"weight": weight, "quant_map": quant_map, "quant_state": state_part}
    if "nested_blocksize" in state:
        parts["absmax"] = _expect(stored_part(specs, f"{module}.weight.absmax"), ("U8",), (n_blocks,), f"{module}.weight.absmax")
        n_nested = math.ceil(n_blocks / state["nested_blocksize"])
        parts["nested_absmax"] = _expect(stored_part(specs, f"{module}.weight.nested_absmax"), ("F32",), (n_nested,),
                                         f"{module}.weight.nested_absmax")
        parts["nested_quant_map"] = _expect(stored_part(specs, f"{module}.weight.nested_quant_map"), ("F32",), (256,),
                                            f"{module}.weight.nested_quant_map")
    else:
        parts["absmax"] = _expect(stored_part(specs, f"{module}.weight.absmax"), ("F32",), (n_blocks,), f"{module}.weight.absmax")
    return PackedTensor("bnb-4bit", module, (n_out, n_in), 4, state["blocksize"], parts, dict(state))


def bnb8_tensor(module: str, specs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> PackedTensor:
    weight = _expect(stored_part(specs, f"{module}.weight"), ("I8",), None, f"{module}.weight")
    n_out, n_in = _two_d(weight)
    scb = _expect(stored_part(specs, f"{module}.SCB"), ("F32",), (n_out,), f"{module}.SCB")
    parts = {"weight": weight, "SCB": scb}
    fmt = stored_part(specs, f"{module}.weight_format")
    if fmt is not None:
        parts["weight_format"] = _expect(fmt, ("U8",), (), fmt.name)
    return PackedTensor("bnb-int8", module, (n_out, n_in), 8, n_in, parts)


# ----- MLX ----------------------------------------------------------------------------------------
def mlx_tensor(layout: Layout, module: str, specs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> PackedTensor:
    qc, src = layout.config, layout.source
    mode = qc.get("mode") or "affine"
    if mode != "affine":
        raise UnsupportedCheckpoint(src, f"MLX quantization mode {mode!r} (supported: affine)", field="quantization.mode")
    bits = qc.get("bits")
    if bits not in (2, 4, 8):
        raise UnsupportedCheckpoint(src, f"MLX bits={bits!r} (supported: 2, 4, 8)", field="quantization.bits")
    group = _int_in(qc.get("group_size"), 1, MAX_GROUP_SIZE, src, "quantization.group_size")
    weight = _expect(stored_part(specs, f"{module}.weight"), ("U32",), None, f"{module}.weight")
    n_out, words = _two_d(weight)
    n_in = words * 32 // bits
    if n_in % group:
        raise MalformedCheckpoint(weight.file, f"{n_in} inputs are not whole groups of {group}", field=weight.name)
    scales = _expect(stored_part(specs, f"{module}.scales"), FLOAT_DTYPES, (n_out, n_in // group), f"{module}.scales")
    biases = _expect(stored_part(specs, f"{module}.biases"), (scales.dtype,), scales.shape, f"{module}.biases")
    return PackedTensor("mlx", module, (n_out, n_in), bits, group, {"weight": weight, "scales": scales, "biases": biases})


def modules_of(layout: Layout | None, names: list[str]) -> dict[str, str]:
    """Module path -> layout for every quantized weight among ``names`` (stored names)."""
    present = set(names)
    found: dict[str, str] = {}
    for name in names:
        for suffix, kind in ((".qweight", "gptq-or-awq"), (".weight_packed", "ct"), (".SCB", "bnb-int8")):
            if name.endswith(suffix):
                found[name[: -len(suffix)]] = kind
        for state in BNB4_STATES:
            if name.endswith("." + state):
                found[name[: -len(state) - 1]] = "bnb-4bit"
        if name.endswith(".weight_scale") and f"{name[:-6]}" in present:
            found[name[: -len(".weight_scale")]] = "ct"
        if (layout is not None and layout.method == "mlx" and name.endswith(".scales")
                and f"{name[:-7]}.weight" in present and f"{name[:-7]}.biases" in present):
            found[name[: -len(".scales")]] = "mlx"
    return found


def parts_of(kind: str, module: str) -> tuple[str, ...]:
    """Every stored name the layout may use for ``module``."""
    if kind == "gptq-or-awq":
        return tuple(f"{module}.{p}" for p in GPTQ_PARTS)
    if kind == "ct":
        return tuple(f"{module}.{p}" for p in CT_PARTS) + (f"{module}.weight",)
    if kind == "bnb-4bit":
        return (f"{module}.weight",) + tuple(f"{module}.{p}" for p in BNB4_PARTS + BNB4_STATES)
    if kind == "bnb-int8":
        return (f"{module}.weight", f"{module}.SCB", f"{module}.weight_format")
    return (f"{module}.weight",) + tuple(f"{module}.{p}" for p in MLX_PARTS)


def find_packed(ckpt: Checkpoint, specs: dict[str, tuple[str, dict]], config: dict, config_path: str,
                file_metadata: dict[str, str]) -> dict[str, PackedTensor]:
    """Every quantized weight of a safetensors checkpoint, by module path, its parts
    validated; ``specs`` maps each stored name to ``(shard, header entry)``. The few
    values a layout keeps in tensors (bnb quant state, compressed-tensors weight_shape)
    are read here, bounded."""
    layout = quantization_layout(config, config_path, file_metadata)
    modules = modules_of(layout, list(specs))
    found: dict[str, PackedTensor] = {}
    for module, kind in modules.items():
        if kind == "bnb-4bit":
            state_part = next(stored_part(specs, f"{module}.{s}") for s in BNB4_STATES if f"{module}.{s}" in specs)
            assert state_part is not None
            if state_part.dtype != "U8" or state_part.n_bytes > MAX_QUANT_STATE_BYTES:
                raise MalformedCheckpoint(state_part.file, f"quant state must be U8 of at most {MAX_QUANT_STATE_BYTES} "
                                          "bytes", field=state_part.name, offset=state_part.offset)
            state = bnb_state(bytes(ckpt._pread(state_part.file, state_part.n_bytes, state_part.offset)), state_part)
            if not state_part.name.endswith(state["quant_type"]):
                raise MalformedCheckpoint(state_part.file, f"quant state says {state['quant_type']}", field=state_part.name)
            found[module] = bnb4_tensor(module, specs, state, state_part)
            continue
        if kind == "bnb-int8":
            found[module] = bnb8_tensor(module, specs)
            continue
        if layout is None:
            raise MalformedCheckpoint(config_path, f"{module} is stored quantized ({kind}) but config.json declares no "
                                      "quantization_config", field="quantization_config")
        found[module] = _layout_tensor(ckpt, layout, kind, module, specs)
    return found


def _layout_tensor(ckpt: Checkpoint, layout: Layout, kind: str, module: str, specs: dict[str, tuple[str, dict]]) -> PackedTensor:
    method = layout.method
    expected = {"gptq-or-awq": ("gptq", "awq"), "ct": ("compressed-tensors",), "mlx": ("mlx",)}[kind]
    if method not in expected:
        raise MalformedCheckpoint(layout.source, f"{module} is stored as {kind} but quant_method is {method!r}",
                                  field="quantization_config.quant_method")
    if method == "gptq":
        return gptq_tensor(layout, module, specs)
    if method == "awq":
        return awq_tensor(layout, module, specs)
    if method == "mlx":
        return mlx_tensor(layout, module, specs)
    tensor = ct_tensor(layout, module, specs)
    if tensor.layout != "ct-pack":
        return tensor
    part = tensor.parts["weight_shape"]
    raw = ckpt._pread(part.file, part.n_bytes, part.offset)
    shape = np.frombuffer(raw, dtype="<i4" if part.dtype == "I32" else "<i8").tolist()
    if not all(isinstance(d, int) and 0 < d < 1 << 31 for d in shape):
        raise MalformedCheckpoint(part.file, f"weight_shape {shape} is not two positive sizes", field=part.name,
                                  offset=part.offset)
    return ct_pack_finish(tensor, (shape[0], shape[1]))
