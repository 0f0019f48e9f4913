"""What a leaker can do to a marked copy: the transformations the robustness table measures.

Each works on canonical float32 tensors and writes a real file through the real writers:
quantization with the project's llama.cpp-exact quantizer (:func:`quantize_mix`, every
llama.cpp mix), one type for the changed tensors (:func:`write_gguf_variant`, the same
exact quantizers through the package's model writer) or llama.cpp's own
``llama_model_quantize`` (a cross-check, when llama-cpp-python is importable),
magnitude pruning, MLP permutation + rescaling, and collusion (averages and midpoints
of several copies). Fine-tuning and distillation live in the robustness script
(they need the synth models and a training loop).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from provenance.formats import open_checkpoint
from provenance.formats.write import write_checkpoint

#: llama.cpp file types (``LLAMA_FTYPE_MOSTLY_*``) of the mixes used here.
K_MIXES = {"Q8_0": 7, "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q4_K_S": 14}


def read_tensors(path: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Canonical float32 tensors (2-D views) of a checkpoint."""
    with open_checkpoint(path) as ckpt:
        return {n: ckpt.read_rows(n) for n in (names or list(ckpt.tensors))}


def write_gguf_variant(template: str | os.PathLike[str], output: str | os.PathLike[str],
                       replace: Mapping[str, np.ndarray], qtype: str | None = None,
                       types: Mapping[str, str] | None = None) -> None:
    """Copy GGUF ``template`` to ``output`` with the tensors in ``replace`` swapped in.

    Replaced tensors are stored as ``types[name]``, else ``qtype``, else their template
    type, quantized by the llama.cpp-exact quantizers (:func:`provenance.codecs.quantize_rows`;
    for the legacy types the same bytes as gguf-py's). Other tensors are copied as stored.
    """
    with open_checkpoint(template) as ckpt:
        retype = {name: (types or {}).get(name) or qtype or ckpt.info(name).dtype for name in replace}
        write_checkpoint(ckpt, output, replace=replace, retype=retype)


_QUIET = None


def llama_cpp_available() -> bool:
    _add_local_llama_cpp()
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


def _add_local_llama_cpp() -> None:
    local = Path(__file__).resolve().parents[2] / ".cache" / "llamacpp"
    if local.is_dir() and str(local) not in sys.path:
        sys.path.append(str(local))


def quantize_with_llama_cpp(source: str | os.PathLike[str], output: str | os.PathLike[str], mix: str, threads: int = 1) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``, no importance matrix), from
    llama-cpp-python built into ``.cache/llamacpp``: a cross-check of :func:`quantize_mix`.

    Measured: both write byte-identical files from tiny-llama-f32/f16 and from marked
    copies; the shared ``tiny-llama-Q*.gguf`` files equal what both write from the *f16*
    source (from the f32 source ~1-2% of K-quant bytes differ), i.e. they were made from it."""
    _add_local_llama_cpp()
    import llama_cpp

    global _QUIET
    if _QUIET is None:  # llama.cpp logs every tensor to stderr; keep the callback alive
        _QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_QUIET, None)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_MIXES[mix]
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), params)
    if code != 0:
        raise RuntimeError(f"llama_model_quantize failed with {code}")


def quantize_mix(source: str | os.PathLike[str], output: str | os.PathLike[str], mix: str) -> None:
    """The project's llama.cpp-exact quantizer (:func:`provenance.quant.writer.quantize_model`):
    llama.cpp's per-tensor type recipe and reference quantizers, no importance matrix."""
    from provenance.quant.writer import quantize_model

    quantize_model(source, output, mix)


def same_bytes(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def prune(w: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Magnitude pruning: zero the ``fraction`` smallest |w| in each row."""
    k = int(w.shape[1] * fraction)
    out = w.copy()
    if k:
        idx = np.argpartition(np.abs(w), k - 1, axis=1)[:, :k]
        np.put_along_axis(out, idx, 0.0, axis=1)
    return out


def permute_rescale(tensors: dict[str, np.ndarray], layers: list[int], seed: int = 0, log_scale: float = 0.5) -> dict[str, np.ndarray]:
    """Permute every MLP's hidden units and rescale up rows by s / down columns by 1/s:
    the network computes exactly the same function (up to storage rounding)."""
    rng = np.random.default_rng(seed)
    out = dict(tensors)
    for layer in layers:
        gate, up, down = (f"blk.{layer}.{r}.weight" for r in ("ffn_gate", "ffn_up", "ffn_down"))
        perm = rng.permutation(tensors[gate].shape[0])
        s = np.exp(rng.normal(0.0, log_scale, perm.size)).astype(np.float32)
        out[gate] = tensors[gate][perm]
        out[up] = tensors[up][perm] * s[:, None]
        out[down] = tensors[down][:, perm] / s[None, :]
    return out


def average(copies: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {n: np.mean([c[n] for c in copies], axis=0, dtype=np.float64).astype(np.float32) for n in copies[0]}


def midpoint(copies: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per weight, the midpoint of the copies' extremes (the classic +-1-mark eraser)."""
    out = {}
    for n in copies[0]:
        stack = np.stack([c[n] for c in copies]).astype(np.float64)
        out[n] = ((stack.min(axis=0) + stack.max(axis=0)) / 2).astype(np.float32)
    return out
