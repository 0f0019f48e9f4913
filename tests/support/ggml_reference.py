"""Reference dequantizers and quantizers the codecs are held to, bit for bit.

gguf-py's numpy (``gguf.quants``) where it covers a type; llama.cpp's own C
(``ggml_get_type_traits(type)->to_float`` and ``ggml_quantize_chunk`` of libggml-base, from the
llama.cpp build in ``.cache/llamacpp``, see docs/watermark.md) for every type, when that
build is present. gguf-py 0.19 knows Q1_0's geometry but cannot dequantize it, so Q1_0 is
checked against llama.cpp only.
"""
from __future__ import annotations

import ctypes
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path

import gguf
import numpy as np
import pytest

LLAMACPP_DIR = Path(__file__).resolve().parents[2] / ".cache" / "llamacpp"
LIBGGML = LLAMACPP_DIR / "llama_cpp" / "lib" / "libggml-base.so"

_ROW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _Traits(ctypes.Structure):
    """``struct ggml_type_traits`` (ggml.h)."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


@cache
def _libggml() -> ctypes.CDLL | None:
    if not LIBGGML.is_file():
        return None
    lib = ctypes.CDLL(str(LIBGGML))
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]
    return lib


def ggml_traits(ggml_type: int) -> _Traits:
    lib = _libggml()
    if lib is None:
        pytest.skip(f"llama-cpp-python is not built in {LLAMACPP_DIR} (optional, see docs/watermark.md)")
    return lib.ggml_get_type_traits(int(ggml_type)).contents


def gguf_can_dequantize(ggml_type: int) -> bool:
    return gguf.GGMLQuantizationType(ggml_type) in gguf.quants._type_traits


def has_reference(ggml_type: int) -> bool:
    """Can this machine check ``ggml_type``'s kernels (gguf-py, or a llama.cpp build)?"""
    return gguf_can_dequantize(ggml_type) or _libggml() is not None


def gguf_dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf*0 etc. in gguf's numpy
        return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(ggml_type)), dtype=np.float32)


def ggml_dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """llama.cpp's ``dequantize_row_*`` on ``(rows, row_bytes)`` blocks."""
    traits = ggml_traits(ggml_type)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.empty((raw.shape[0], raw.shape[1] // traits.type_size * traits.blck_size), np.float32)
    _ROW_FN(traits.to_float)(raw.ctypes.data, out.ctypes.data, out.size)
    return out


def ggml_quantize(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """llama.cpp's ``ggml_quantize_chunk`` (no importance matrix) on float32 ``(rows,
    row_length)``: what ``llama_model_quantize`` runs. (For IQ4_NL this differs from
    ``quantize_row_iq4_nl_ref``, which skips the scale search.)"""
    traits = ggml_traits(ggml_type)
    lib = _libggml()
    assert lib is not None
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // traits.blck_size * traits.type_size), np.uint8)
    written = lib.ggml_quantize_chunk(int(ggml_type), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    assert written == out.nbytes
    return out


def reference_dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """gguf-py's dequantization where it has one, else llama.cpp's (skips without it)."""
    if gguf_can_dequantize(ggml_type):
        return gguf_dequantize(raw, ggml_type)
    return ggml_dequantize(raw.reshape(-1, raw.shape[-1]), ggml_type).reshape(*raw.shape[:-1], -1)


def llama_cpp_quantize(source: Path, out: Path, ftype: str) -> Path:
    """``source`` quantized by llama.cpp itself (``llama_model_quantize``, default parameters,
    ``LLAMA_FTYPE_MOSTLY_<ftype>``), in a subprocess; skips without the build."""
    if not (LLAMACPP_DIR / "llama_cpp").is_dir():
        pytest.skip(f"llama-cpp-python is not built in {LLAMACPP_DIR} (optional, see docs/watermark.md)")
    script = ("import ctypes, sys, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); "
              f"p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_{ftype}; "
              "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))")
    subprocess.run([sys.executable, "-c", script, str(source), str(out)], check=True, capture_output=True,
                   env={"PYTHONPATH": str(LLAMACPP_DIR), "PATH": "/usr/bin:/bin"}, timeout=300)
    return out
