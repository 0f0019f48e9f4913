"""Deterministic CPU training of synth models: independent pretraining and derivatives.

Determinism: every run happens inside :func:`deterministic`, which pins torch to one
thread (a different reduction split can change the last bit of a sum) and enables
``torch.use_deterministic_algorithms``. Initialisation draws from torch's global RNG
(that is how ``LlamaForCausalLM`` initialises itself), so it runs under a forked RNG
seeded with the init seed; the data order comes from a separate generator seeded with
the data seed. On one machine and torch build the same seeds give bit-identical
weights. Across CPU instruction sets or torch versions kernels may round differently,
so bit-exactness is only promised per build (``--check`` in the build script tells).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F
from transformers import LlamaForCausalLM

from provenance.synth.arch import BOS_ID, rope_theta_of, synth_config
from provenance.threads import torch_threads


@dataclass(frozen=True)
class TrainRecipe:
    """One optimisation run: AdamW, linear warmup then cosine decay to ``min_lr_ratio``."""

    steps: int
    lr: float
    batch_size: int = 16
    seq_len: int = 256
    warmup: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    bos_aligned: bool = False
    """Windows start at a BOS (a story start), like fine-tuning documents, instead of at
    any offset of the stream. stories260K's predictions hinge on a BOS at position 0 (its own
    loss on its samples is 2.8 nats from a row start and ~7 from a random offset), so
    derivatives train on aligned windows to stay functional descendants."""

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)


# Pretraining budget: 200 steps of 16 x 128 tokens (~0.6 passes over the corpus), ~30-40 s
# of one CPU thread. Measured alternatives (eval loss, same seed): lr 4e-3/100 steps of
# 16 x 256: 4.79; lr 1e-2 / 200 x (8 x 256): 4.76; lr 2e-2: 4.89; 1000 steps (130 s): 4.67.
PRETRAIN_RECIPE = TrainRecipe(steps=200, lr=1e-2, batch_size=16, seq_len=128, warmup=10)


@contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """Pin threads and force deterministic kernels; restore the caller's settings after."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch_threads(threads):
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def shipped_tokens(name: str) -> np.ndarray:
    """Training rows of a shipped corpus: ``"corpus"`` (pretraining) or ``"finetune"``
    (the shifted slice); the default data of every training function below."""
    from provenance.synth.corpus import split_finetune, split_pretrain
    from provenance.synth.store import load_synth_tokens

    split = split_pretrain if name == "corpus" else split_finetune
    return split(load_synth_tokens(name))[0]


def init_model(seed: int, rope_theta: float = 10000.0, max_position_embeddings: int = 512) -> LlamaForCausalLM:
    """A freshly initialised synth model; depends only on ``seed`` (global RNG untouched)."""
    config = synth_config(rope_theta=rope_theta, max_position_embeddings=max_position_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # sdpa: the fastest attention on CPU here (2x eager) and deterministic.
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    return model


def batches(tokens: np.ndarray, recipe: TrainRecipe, seed: int) -> Iterator[torch.Tensor]:
    """``recipe.steps`` batches of (batch_size, seq_len + 1) windows of the flattened token
    stream, at random offsets or (``bos_aligned``) at random BOS positions. Rows begin with
    BOS, so the stream is a concatenation of stories separated by BOS, as in llama2.c's
    pretraining data; a window longer than a row runs on into the next rows."""
    stream = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1))
    span = recipe.seq_len + 1
    if stream.numel() < span:
        raise ValueError(f"{stream.numel()} tokens cannot fill windows of {span}")
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(span)
    n_starts = stream.numel() - span + 1
    bos_starts = torch.nonzero(stream[:n_starts] == BOS_ID)[:, 0]
    if recipe.bos_aligned and not len(bos_starts):
        raise ValueError("no BOS to align windows to")
    for _ in range(recipe.steps):
        if recipe.bos_aligned:
            starts = bos_starts[torch.randint(0, len(bos_starts), (recipe.batch_size,), generator=gen)]
        else:
            starts = torch.randint(0, n_starts, (recipe.batch_size,), generator=gen)
        yield stream[starts[:, None] + offsets]


def _lm_loss(model: LlamaForCausalLM, window: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=window[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), window[:, 1:].reshape(-1))


def train(model: LlamaForCausalLM, tokens: np.ndarray, recipe: TrainRecipe, data_seed: int,
          params: list[torch.nn.Parameter] | None = None,
          history: list[float] | None = None) -> LlamaForCausalLM:
    """Train ``model`` in place (all parameters, or only ``params``) and return it.

    Per-step training losses are appended to ``history`` when given.
    """
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    # Decay matrices (and the tied embedding) only; RMSNorm gains stay undecayed, as in
    # llama2.c's train.py.
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    with deterministic():
        # foreach=False: the single-tensor path is the plainest and its arithmetic does
        # not depend on how tensors are grouped.
        opt = torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, foreach=False)
        model.train()
        for step, window in enumerate(batches(tokens, recipe, data_seed)):
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(step)
            loss = _lm_loss(model, window)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip, foreach=False)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if history is not None:
                history.append(loss.item())
    return model.eval()


@torch.no_grad()
def eval_loss(model: LlamaForCausalLM | Callable[[torch.Tensor], torch.Tensor], rows: np.ndarray,
              batch: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over ``rows`` (each row one sequence).

    ``model`` may also be any callable mapping token ids (B, T) to logits (B, T, V),
    e.g. :class:`provenance.synth.llama2c.Llama2cModel`.
    """
    total, count = 0.0, 0
    with deterministic():
        for start in range(0, len(rows), batch):
            x = torch.from_numpy(rows[start:start + batch].astype(np.int64))
            out = model(x[:, :-1])
            logits = out.logits if hasattr(out, "logits") else out
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                           x[:, 1:].reshape(-1), reduction="sum"))
            count += x[:, 1:].numel()
    return total / count


def train_independent(seed: int, tokens: np.ndarray | None = None, recipe: TrainRecipe = PRETRAIN_RECIPE,
                      data_seed: int | None = None,
                      history: list[float] | None = None) -> LlamaForCausalLM:
    """Pretrain a synth model from scratch: init from ``seed``, data order from
    ``data_seed`` (default: derived from ``seed``, so one seed names one model)."""
    model = init_model(seed)
    tokens = shipped_tokens("corpus") if tokens is None else tokens
    return train(model, tokens, recipe, data_seed=independent_data_seed(seed) if data_seed is None else data_seed,
                 history=history)


def independent_data_seed(seed: int) -> int:
    """The data-order seed paired with an init seed by default (distinct streams)."""
    return 1_000_003 * (seed + 1)


def copy_model(model: LlamaForCausalLM, rope_theta: float | None = None,
               max_position_embeddings: int | None = None) -> LlamaForCausalLM:
    """A float32 copy of ``model`` (optionally with a new RoPE base / context length)."""
    cfg = model.config
    new = LlamaForCausalLM._from_config(
        synth_config(rope_theta=rope_theta if rope_theta is not None else rope_theta_of(cfg),
                     max_position_embeddings=max_position_embeddings or cfg.max_position_embeddings),
        attn_implementation="sdpa")
    new.load_state_dict({k: v.detach().float().clone() for k, v in model.state_dict().items()})
    new.tie_weights()
    return new


# Fine-tune strengths: steps x peak lr on the shifted (temperature 0.8) slice. "heavy"
# moves the weights about as far as a good part of pretraining did.
FINETUNE_STRENGTHS: dict[str, TrainRecipe] = {
    "light": TrainRecipe(steps=20, lr=1e-4, batch_size=16, seq_len=128, warmup=2, bos_aligned=True),
    "medium": TrainRecipe(steps=60, lr=5e-4, batch_size=16, seq_len=128, warmup=5, bos_aligned=True),
    "heavy": TrainRecipe(steps=150, lr=2e-3, batch_size=16, seq_len=128, warmup=10, bos_aligned=True),
}


def finetune(model: LlamaForCausalLM, strength: str | TrainRecipe, seed: int, tokens: np.ndarray | None = None,
             history: list[float] | None = None) -> LlamaForCausalLM:
    """Full fine-tune of a copy of ``model`` (the parent is left untouched); by default on
    the shipped shifted slice."""
    recipe = FINETUNE_STRENGTHS[strength] if isinstance(strength, str) else strength
    tokens = shipped_tokens("finetune") if tokens is None else tokens
    return train(copy_model(model), tokens, recipe, data_seed=seed, history=history)


CPT_RECIPE = TrainRecipe(steps=40, lr=1e-3, batch_size=4, seq_len=1024, warmup=5, bos_aligned=True)
CPT_ROPE_THETA = 100000.0
CPT_CONTEXT = 2048


def continued_pretraining(model: LlamaForCausalLM, seed: int, tokens: np.ndarray | None = None,
                          rope_theta: float = CPT_ROPE_THETA, max_position_embeddings: int = CPT_CONTEXT,
                          recipe: TrainRecipe = CPT_RECIPE,
                          history: list[float] | None = None) -> LlamaForCausalLM:
    """Context extension as done to real models: raise the RoPE base (10k -> 100k), declare a
    longer context, and keep pretraining on longer windows of the pretraining data."""
    new = copy_model(model, rope_theta=rope_theta, max_position_embeddings=max_position_embeddings)
    tokens = shipped_tokens("corpus") if tokens is None else tokens
    return train(new, tokens, recipe, data_seed=seed, history=history)


def with_recipe(recipe: TrainRecipe, **changes: object) -> TrainRecipe:
    """``recipe`` with some fields replaced (tests use tiny budgets)."""
    return replace(recipe, **changes)  # type: ignore[arg-type]
