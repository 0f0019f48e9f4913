"""The registry is the single source of per-type codec facts (docs/quantization.md, "Adding a
ggml type"): every type gguf knows is accounted for exactly once, every registered codec is
bit-exact with the reference dequantizers (gguf-py's numpy and llama.cpp's own C), and no
module outside the registry keeps a table of ggml types."""
from __future__ import annotations

import ast
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import provenance.codecs.dequant as dequant_module
import provenance.codecs.grid as grid_module
import provenance.codecs.kernels as kernels_module
import provenance.codecs.native as native_module
import provenance.codecs.quantize_k as quantize_k_module
import provenance.codecs.quantize_ref as quantize_ref_module
import provenance.codecs.recipes as recipes_module
from provenance.codecs import dequantize_rows, quantize_rows
from provenance.codecs.bits import count_bit_mismatches
from provenance.codecs.registry import QUANT_TYPES, UNSUPPORTED, find_quant_type, quant_type
from provenance.codecs.types import PLAIN_TYPES, plain_type, type_info
from provenance.formats import open_checkpoint
from tests.conftest import QUANT_DIR
from tests.support.ggml_reference import (
    ggml_dequantize,
    ggml_quantize,
    ggml_traits,
    gguf_can_dequantize,
    gguf_dequantize,
    llama_cpp_quantize,
)

PACKAGE = Path(__file__).resolve().parents[2] / "provenance"
REGISTERED = list(QUANT_TYPES.values())
IDS = [qt.name for qt in REGISTERED]
GGML_NAMES = {t.name for t in T}

# Where ggml types may be listed: the registry and its descriptors, the plain-type table,
# and modules whose tables are not codec facts: llama.cpp's per-tensor type policy
# (quantize_mix.py, a line-for-line mirror of llama_tensor_get_type), the safetensors dtype
# table (formats/dtypes.py) and llama.cpp ftype names (watermark/attacks.py), whose names
# coincide with some ggml ones.
ALLOWED = {"codecs/registry.py", "codecs/types.py", "quant/quantize_mix.py", "formats/dtypes.py", "watermark/attacks.py"}
ALLOWED_DIRS = {"codecs/ggml"}
# Modules allowed a local plain-dtype lookup for now (none: the reader interface and the
# model writer ask codecs.types / formats.dtypes).
PENDING: set[str] = set()

def test_every_gguf_type_is_accounted_for_exactly_once() -> None:
    for qtype in T:
        kinds = [int(qtype) in QUANT_TYPES, int(qtype) in PLAIN_TYPES, int(qtype) in UNSUPPORTED]
        assert sum(kinds) == 1, f"{qtype.name}: registered/plain/unsupported = {kinds}"
    assert all(qt.ggml_type == int(qt.qtype) and qt.name == qt.qtype.name for qt in REGISTERED)


def test_lookup_by_number_and_name() -> None:
    assert quant_type("Q4_K") is quant_type(int(T.Q4_K)) is quant_type(T.Q4_K)
    assert (quant_type("Q4_K").block_size, quant_type("Q4_K").type_size) == gguf.GGML_QUANT_SIZES[T.Q4_K]
    assert find_quant_type("F16") is None and find_quant_type("NOT_A_TYPE") is None and find_quant_type(9999) is None
    assert plain_type("BF16").torch_dtype().itemsize == 2 and plain_type("Q4_K") is None
    with pytest.raises(NotImplementedError, match="Q8_K"):
        quant_type("Q8_K")


@pytest.mark.parametrize("qt", REGISTERED, ids=IDS)
def test_geometry_agrees_with_llama_cpp(qt) -> None:  # type: ignore[no-untyped-def]
    traits = ggml_traits(qt.ggml_type)
    assert (traits.blck_size, traits.type_size) == (qt.block_size, qt.type_size)
    assert type_info(qt.name).block_size == qt.block_size


def _blocks(qt, n: int = 2000) -> np.ndarray:  # type: ignore[no-untyped-def]
    raw = np.random.default_rng(qt.ggml_type).integers(0, 256, (n, qt.type_size), dtype=np.uint8)
    for offset in qt.f16_scales:  # mostly sane scales, so values are not all inf/NaN
        scales = (np.random.default_rng(0).standard_normal(n) * 1e-2).astype(np.float16)
        raw[::2, offset:offset + 2] = np.ascontiguousarray(scales[::2]).view(np.uint8).reshape(-1, 2)
    return raw


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "torch"])
@pytest.mark.parametrize("qt", REGISTERED, ids=IDS)
def test_kernels_bit_exact_with_gguf(qt, native: bool) -> None:  # type: ignore[no-untyped-def]
    if not gguf_can_dequantize(qt.ggml_type):
        pytest.skip(f"gguf-py cannot dequantize {qt.name} (held to llama.cpp's C below)")
    raw = _blocks(qt)
    assert count_bit_mismatches(dequantize_rows(raw, qt.ggml_type, native), gguf_dequantize(raw, qt.ggml_type)) == 0


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "torch"])
@pytest.mark.parametrize("qt", REGISTERED, ids=IDS)
def test_kernels_bit_exact_with_llama_cpp(qt, native: bool) -> None:  # type: ignore[no-untyped-def]
    raw = _blocks(qt)
    assert count_bit_mismatches(dequantize_rows(raw, qt.ggml_type, native), ggml_dequantize(raw, qt.ggml_type)) == 0


@pytest.mark.parametrize("qt", [qt for qt in REGISTERED if qt.quantize is not None], ids=lambda qt: qt.name)
def test_quantizers_bit_exact_with_llama_cpp(qt) -> None:  # type: ignore[no-untyped-def]
    x = (np.random.default_rng(1).standard_normal((64, 4 * qt.block_size)) * 0.02).astype(np.float32)
    x[0] = 0.0  # an all-zero row
    x[1, ::3] = -x[1, ::3] * 50  # spiky blocks
    want = ggml_quantize(x, qt.ggml_type)
    assert np.array_equal(quantize_rows(x, qt.ggml_type), want)


@pytest.mark.download
def test_iq4_nl_file_written_by_llama_cpp_is_reproduced(tmp_path: Path) -> None:
    # no IQ4_NL file is shared; llama.cpp writes one, and every IQ4_NL tensor must match
    source = QUANT_DIR / "tiny-llama-f32.gguf"
    real = llama_cpp_quantize(source, tmp_path / "tiny-llama-IQ4_NL.gguf", "IQ4_NL")
    checked = 0
    with open_checkpoint(real) as ck, open_checkpoint(source) as src:
        for name, info in ck.tensors.items():
            if info.dtype == "IQ4_NL":
                assert np.array_equal(quantize_rows(src.read_rows(name), "IQ4_NL"), ck.raw_rows(name)), name
                checked += 1
    assert checked >= 10


def test_old_parallel_tables_are_gone() -> None:
    old = {
        kernels_module: ["KERNELS", "PLAIN", "F16_SCALE_OFFSETS", "decode_blocks"],
        native_module: ["NATIVE_TYPES", "_KERNEL_NAMES", "_table"],
        grid_module: ["UNIFORM_RANGE", "_VECTOR"],
        recipes_module: ["EXACT_TYPES", "TOLERANT_TYPES"],
        quantize_k_module: ["BLOCK_QUANTIZERS", "quantize_k_rows"],
        quantize_ref_module: ["_GGUF_EXACT", "_IQ4"],
        dequant_module: ["PLAIN", "KERNELS", "NATIVE_TYPES"],
    }
    for module, names in old.items():
        assert not [n for n in names if hasattr(module, n)], module.__name__


def _type_refs(node: ast.expr) -> bool:
    """Is ``node`` a ggml type: ``T.Q4_K`` / ``GGMLQuantizationType.Q4_K`` or ``"Q4_K"``?"""
    if isinstance(node, ast.Attribute) and node.attr in GGML_NAMES:
        base = node.value
        return (isinstance(base, ast.Name) and base.id in ("T", "GGMLQuantizationType")) or (
            isinstance(base, ast.Attribute) and base.attr == "GGMLQuantizationType"
        )
    return isinstance(node, ast.Constant) and node.value in GGML_NAMES


def _per_type_tables(tree: ast.AST) -> list[int]:
    """Line numbers of per-type tables: dicts keyed by two or more ggml types (members or
    names), and sets / lists / tuples of two or more ``T.X`` members."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            hits = sum(_type_refs(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Set | ast.List | ast.Tuple):
            hits = sum(_type_refs(e) for e in node.elts if not isinstance(e, ast.Constant))
        else:
            continue
        if hits >= 2:
            found.append(node.lineno)
    return found


def test_no_per_type_tables_outside_the_registry() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED | PENDING or any(rel.startswith(d + "/") for d in ALLOWED_DIRS):
            continue
        lines = _per_type_tables(ast.parse(path.read_text(), str(path)))
        if lines:
            offenders[rel] = lines
    assert offenders == {}, "per-type tables belong in provenance/codecs/ggml (docs/quantization.md)"


def test_the_ast_check_sees_a_table() -> None:
    # the check above must be able to fail: the deleted tables are what it looks for
    tree = ast.parse('UNIFORM_RANGE = {T.Q4_0: (-8, 7), T.Q4_1: (0, 15)}\nnarrow = {"F16": 1, "BF16": 2}\n'
                     'TOLERANT = {T.IQ4_NL, T.IQ4_XS}\nprecisions = ("F16", "BF16")')
    assert _per_type_tables(tree) == [1, 2, 3]
