"""Structural derivatives of shipped synth models: what hub derivatives do beyond fine-tuning.

Each builder takes a parent's HF checkpoint directory and writes a new HF checkpoint
directory with the real writers (``save_pretrained``; ``mergekit`` for merges and layer
slicing, as model hubs use it). Parents are the trained synth models, so every derivative
has a known lineage (docs/synth.md, "Structural derivatives"):

* :func:`passthrough` (mergekit ``passthrough``): depth upscaling (SOLAR-style, layers 0-3
  then 1-4), layer removal, reordering, frankenmerges of slices from two parents;
* :func:`merge` (mergekit ``linear``, ``slerp``, ``ties``, ``dare_ties``, ``task_arithmetic``);
* :func:`resize_vocabulary`: rows appended (``resize_token_embeddings``, mean-initialised)
  or the vocabulary truncated;
* :func:`prune_width`: fewer MLP units (the largest ``|gate|*|up|*|down|`` kept);
* :func:`convert_gqa`: fewer KV heads, k/v heads mean-pooled per group (the GQA paper's
  conversion of a multi-head checkpoint);
* :func:`rotate_residual`: RMSNorm gains folded into the matrices that read them, then
  the residual stream rotated by a random orthogonal matrix (the transform SliceGPT and
  QuaRot apply); the network computes the same function (tests check the logits);
  ``permute_units=True`` also permutes each layer's MLP units;
* :func:`with_vocabulary` and :func:`reorder_vocabulary`: a GGUF of the parent carrying a
  token list, and one whose token ids were shuffled (embedding rows and token list moved
  together, so every token keeps its row) with some tokens replaced by new ones.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from provenance.synth.store import WEIGHTS_NAME


def _load(path: str | os.PathLike[str]) -> Any:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()


def _save(model: Any, out: str | os.PathLike[str], dtype: torch.dtype = torch.float16) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    return out


def _mergekit(config: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Run a mergekit configuration (the real tool; ``pip install mergekit``)."""
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise RuntimeError("merges and layer slices are written by mergekit: pip install mergekit") from exc
    run_merge(MergeConfiguration.model_validate(config), os.fspath(out),
              options=MergeOptions(copy_tokenizer=False, lazy_unpickle=False, low_cpu_memory=False, clone_tensors=True,
                                   quiet=True))
    if not (Path(out) / WEIGHTS_NAME).is_file():
        raise RuntimeError(f"mergekit wrote no {WEIGHTS_NAME} under {out}")
    return Path(out)


def passthrough(slices: Sequence[tuple[str | os.PathLike[str], int, int]], out: str | os.PathLike[str]) -> Path:
    """Stack layer ranges ``[start, stop)`` of one or more parents (mergekit ``passthrough``):
    ``[(p, 0, 4), (p, 1, 5)]`` is SOLAR's depth upscaling, ``[(p, 0, 2), (p, 3, 5)]`` drops
    layer 2, ``[(a, 0, 3), (b, 3, 5)]`` a frankenmerge of two parents."""
    config = {"merge_method": "passthrough", "dtype": "float16",
              "slices": [{"sources": [{"model": os.fspath(p), "layer_range": [int(a), int(b)]}]} for p, a, b in slices]}
    return _mergekit(config, out)


def merge(method: str, models: Sequence[tuple[str | os.PathLike[str], dict[str, float]]], out: str | os.PathLike[str],
          base: str | os.PathLike[str] | None = None, parameters: dict[str, Any] | None = None) -> Path:
    """A mergekit merge: ``models`` as (path, per-model parameters such as weight/density)."""
    config: dict[str, Any] = {"merge_method": method, "dtype": "float16",
                              "models": [{"model": os.fspath(p), "parameters": dict(params)} for p, params in models]}
    if base is not None:
        config["base_model"] = os.fspath(base)
    if parameters:
        config["parameters"] = dict(parameters)
    return _mergekit(config, out)


def resize_vocabulary(parent: str | os.PathLike[str], out: str | os.PathLike[str], vocab_size: int, seed: int = 0) -> Path:
    """Append rows (mean-initialised, as ``resize_token_embeddings`` does) or truncate."""
    model = _load(parent)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.resize_token_embeddings(vocab_size, mean_resizing=True)
    return _save(model, out)


def _unit_importance(mlp: Any) -> torch.Tensor:
    gate, up, down = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    return gate.norm(dim=1) * up.norm(dim=1) * down.norm(dim=0)


@torch.no_grad()
def prune_width(parent: str | os.PathLike[str], out: str | os.PathLike[str], n_ff: int) -> Path:
    """Keep the ``n_ff`` MLP units of each layer with the largest weight magnitude."""
    model = _load(parent)
    for layer in model.model.layers:
        mlp = layer.mlp
        keep = torch.sort(torch.topk(_unit_importance(mlp), n_ff).indices).values
        for proj, dim in ((mlp.gate_proj, 0), (mlp.up_proj, 0), (mlp.down_proj, 1)):
            weight = proj.weight.index_select(dim, keep).clone()
            proj.weight = torch.nn.Parameter(weight)
            if dim == 0:
                proj.out_features = n_ff
            else:
                proj.in_features = n_ff
    model.config.intermediate_size = n_ff
    return _save(model, out)


@torch.no_grad()
def convert_gqa(parent: str | os.PathLike[str], out: str | os.PathLike[str], n_head_kv: int) -> Path:
    """Mean-pool groups of consecutive KV heads into ``n_head_kv`` heads (q head h keeps
    meeting the pooled head of its old KV head)."""
    model = _load(parent)
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    old = cfg.num_key_value_heads
    if old % n_head_kv:
        raise ValueError(f"{old} KV heads cannot be pooled into {n_head_kv}")
    pool = old // n_head_kv
    for layer in model.model.layers:
        attn = layer.self_attn
        for proj in (attn.k_proj, attn.v_proj):
            w = proj.weight.reshape(n_head_kv, pool, hd, -1).mean(dim=1).reshape(n_head_kv * hd, -1).clone()
            proj.weight = torch.nn.Parameter(w)
            proj.out_features = n_head_kv * hd
        if hasattr(attn, "num_key_value_groups"):
            attn.num_key_value_groups = cfg.num_attention_heads // n_head_kv
    cfg.num_key_value_heads = n_head_kv
    return _save(model, out)


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed), float64."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


@torch.no_grad()
def rotate_residual(parent: str | os.PathLike[str], out: str | os.PathLike[str], seed: int = 0,
                    dtype: torch.dtype = torch.float16, permute_units: bool = False) -> tuple[Path, torch.Tensor]:
    """Fold every RMSNorm gain into the matrices that read its output (gains become 1),
    untie the output head, then rotate the residual stream by a random orthogonal ``Q``:
    matrices that read it (embedding rows, q/k/v, gate/up, output head) get ``W Q``,
    those that write it (attention output, down) ``Q^T W``. RMSNorm with unit gains
    commutes with an orthogonal map, so logits are unchanged. ``permute_units``: each layer's
    MLP units are also permuted (gate/up rows and down columns together; same function).
    Returns the path and ``Q``."""
    model = _load(parent)
    q = random_orthogonal(model.config.hidden_size, seed)
    unit_rng = torch.Generator().manual_seed(seed + 1)

    def read(linear: torch.nn.Linear, gains: torch.Tensor | None = None) -> None:
        w = linear.weight.double()
        if gains is not None:
            w = w * gains.double()[None, :]
        linear.weight = torch.nn.Parameter((w @ q).float())

    def write(linear: torch.nn.Linear) -> None:
        linear.weight = torch.nn.Parameter((q.T @ linear.weight.double()).float())

    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        g, f = layer.input_layernorm.weight.detach().clone(), layer.post_attention_layernorm.weight.detach().clone()
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            read(proj, g)
        for proj in (mlp.gate_proj, mlp.up_proj):
            read(proj, f)
        write(attn.o_proj)
        write(mlp.down_proj)
        if permute_units:
            perm = torch.randperm(mlp.gate_proj.weight.shape[0], generator=unit_rng)
            mlp.gate_proj.weight = torch.nn.Parameter(mlp.gate_proj.weight[perm].clone())
            mlp.up_proj.weight = torch.nn.Parameter(mlp.up_proj.weight[perm].clone())
            mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, perm].clone())
        layer.input_layernorm.weight.fill_(1.0)
        layer.post_attention_layernorm.weight.fill_(1.0)
    final = model.model.norm.weight.detach().clone()
    embed = model.model.embed_tokens.weight.detach().double()
    head = model.lm_head.weight.detach().double() * final.double()[None, :]
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter((head @ q).float())
    model.model.embed_tokens.weight = torch.nn.Parameter((embed @ q).float())
    model.model.norm.weight.fill_(1.0)
    return _save(model, out, dtype), q


def with_vocabulary(parent: str | os.PathLike[str], out: str | os.PathLike[str], tokens: Sequence[bytes],
                    scheme: str | None = None) -> Path:
    """The parent as a GGUF (``scheme``: a llama.cpp file type, or None for F32) whose
    tokenizer is ``tokens`` (one per embedding row)."""
    from provenance.compare.variants import load_canonical, write_variant

    tensors, arch, _ = load_canonical(parent)
    if len(tokens) != tensors["token_embd.weight"].shape[0]:
        raise ValueError(f"{len(tokens)} tokens for {tensors['token_embd.weight'].shape[0]} embedding rows")
    write_variant(out, tensors, arch, scheme, Path(out).stem, tokens=list(tokens))
    return Path(out)


def reorder_vocabulary(parent: str | os.PathLike[str], out: str | os.PathLike[str], tokens: Sequence[bytes],
                       seed: int = 0, replaced: int = 0, scheme: str | None = None) -> tuple[Path, np.ndarray]:
    """The parent with its token ids shuffled: row ``i`` of the embedding (and of an untied
    output head) and token ``i`` both move to id ``perm[i]``, so each token keeps its vector;
    then ``replaced`` ids get new tokens (``<new-k>``) whose rows are the mean row (as
    ``resize_token_embeddings`` initialises new tokens). Returns the path and ``perm``."""
    from provenance.compare.variants import load_canonical, write_variant

    tensors, arch, _ = load_canonical(parent)
    n = tensors["token_embd.weight"].shape[0]
    if len(tokens) != n:
        raise ValueError(f"{len(tokens)} tokens for {n} embedding rows")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    new_tokens: list[bytes] = [b""] * n
    for i, j in enumerate(perm):
        new_tokens[j] = tokens[i]
    for name in ("token_embd.weight", "output.weight"):
        if name in tensors:
            moved = np.empty_like(tensors[name])
            moved[perm] = tensors[name]
            tensors[name] = moved
    for k, j in enumerate(rng.choice(n, size=replaced, replace=False)):
        new_tokens[j] = f"<new-{k}>".encode()
        for name in ("token_embd.weight", "output.weight"):
            if name in tensors:
                tensors[name][j] = tensors[name].mean(axis=0)
    write_variant(out, tensors, arch, scheme, Path(out).stem, tokens=new_tokens)
    return Path(out), perm
