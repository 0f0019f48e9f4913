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


_NUMBER = re.compile(r"\d+")
_SUFFIXES = (".weight", ".bias")


@lru_cache(maxsize=32)
def _name_map(arch: str) -> gguf.TensorNameMap | None:
    """llama.cpp's name table for one block: building it for N blocks costs ~1 ms and ~270
    entries per block, so a config claiming 10^6 layers would hang the reader; block N is
    mapped through block 0 instead (:func:`hf_to_canonical`)."""
    for model_arch, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return gguf.get_tensor_name_map(model_arch, 1)
    return None


def hf_to_canonical(hf_name: str, arch: str | None, n_blocks: int | None) -> str | None:
    """The GGUF name llama.cpp's converter gives ``hf_name`` (layers ``0..n_blocks-1``), or
    None when it has none.

    A name of block N is looked up with N written as 0 and the GGUF name of block 0 rewritten
    to block N, which is what ``gguf.get_tensor_name_map(arch, n_blocks)`` holds for it
    (``tests/names/test_canonical.py`` compares both on every name the table knows).
    """
    if not arch or not n_blocks:
        return None
    name_map = _name_map(arch)
    if name_map is None:
        return None
    direct = name_map.get_name(hf_name, try_suffixes=_SUFFIXES)
    if direct is not None:
        return direct
    for match in _NUMBER.finditer(hf_name):
        digits = match.group()
        block = int(digits)
        if block >= n_blocks or (len(digits) > 1 and digits[0] == "0"):
            continue
        found = name_map.get_type_and_name(hf_name[:match.start()] + "0" + hf_name[match.end():], try_suffixes=_SUFFIXES)
        if found is None:
            continue
        tensor_type, mapped = found
        template = gguf.TENSOR_NAMES[tensor_type]
        if "{bid}" not in template:  # a per-model tensor stored under a block's name (rope_freqs)
            return mapped
        first = template.format(bid=0)
        if mapped.startswith(first):
            return template.format(bid=block) + mapped[len(first):]
    return None
