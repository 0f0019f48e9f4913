"""Canonical tensor names: llama.cpp's GGUF names, with layer index and role.

HF names are mapped with ``gguf.TensorNameMap`` (llama.cpp's own table), never a
hand-written one.
"""
from __future__ import annotations

import re
from functools import lru_cache

import gguf

# DOTALL: names come from files and may hold any character, newlines included.
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.(weight|bias|scale))?$", re.DOTALL)
_TOP = re.compile(r"^(.*?)(?:\.(weight|bias|scale))?$", re.DOTALL)


def layer_and_role(canonical_name: str) -> tuple[int | None, str]:
    """``blk.3.attn_q.weight`` -> ``(3, "attn_q")``; ``output_norm.weight`` -> ``(None, "output_norm")``."""
    match = _BLOCK.match(canonical_name)
    if match:
        role = match.group(2) if match.group(3) in (None, "weight") else f"{match.group(2)}.{match.group(3)}"
        return int(match.group(1)), role
    top = _TOP.match(canonical_name)
    assert top is not None  # the pattern matches any string
    suffix = top.group(2)
    return None, top.group(1) if suffix in (None, "weight") else f"{top.group(1)}.{suffix}"


@lru_cache(maxsize=32)
def _name_map(arch: str, n_blocks: int) -> gguf.TensorNameMap | None:
    for model_arch, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return gguf.get_tensor_name_map(model_arch, n_blocks)
    return None


def hf_to_canonical(hf_name: str, arch: str | None, n_blocks: int | None) -> str | None:
    """The GGUF name llama.cpp's converter gives ``hf_name``, or None when it has none."""
    if not arch or not n_blocks:
        return None
    name_map = _name_map(arch, n_blocks)
    if name_map is None:
        return None
    return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
