"""LoRA fine-tuning, merged back into the weights (no peft dependency).

A LoRA derivative is what most released fine-tunes are: ``W' = W + (alpha/r) B A`` with
rank ``r`` much smaller than the matrix. After merging, the checkpoint is an ordinary
dense Llama; only a low-rank difference from the parent betrays it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from transformers import LlamaForCausalLM

from provenance.synth.train import TrainRecipe, copy_model, shipped_tokens, train

LORA_TARGETS: tuple[str, ...] = ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj")
LORA_RECIPE = TrainRecipe(steps=80, lr=3e-3, batch_size=16, seq_len=128, warmup=5, bos_aligned=True)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update ``(alpha/r) B A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        self.scale = alpha / rank
        # The usual LoRA init: A random (kaiming-uniform bound), B zero, so training
        # starts exactly at the parent.
        bound = 1.0 / math.sqrt(base.in_features)
        a = (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_a = nn.Parameter(a)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += self.scale * (self.lora_b @ self.lora_a)
        self.base.weight.requires_grad_(True)
        return self.base


def lora_finetune(model: LlamaForCausalLM, seed: int, tokens: np.ndarray | None = None, rank: int = 4,
                  alpha: float = 8.0, targets: tuple[str, ...] = LORA_TARGETS,
                  recipe: TrainRecipe = LORA_RECIPE,
                  history: list[float] | None = None) -> LlamaForCausalLM:
    """LoRA-fine-tune a copy of ``model`` on ``tokens`` and return it merged (dense)."""
    tokens = shipped_tokens("finetune") if tokens is None else tokens
    new = copy_model(model)
    for p in new.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    adapters: list[tuple[nn.Module, str, LoRALinear]] = []
    for layer in new.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in targets:
                if isinstance(getattr(parent, name, None), nn.Linear):
                    wrapped = LoRALinear(getattr(parent, name), rank, alpha, gen)
                    setattr(parent, name, wrapped)
                    adapters.append((parent, name, wrapped))
    if not adapters:
        raise ValueError(f"no LoRA targets among {targets}")
    params = [p for _, _, w in adapters for p in (w.lora_a, w.lora_b)]
    train(new, tokens, recipe, data_seed=seed, params=params, history=history)
    for parent, name, wrapped in adapters:
        setattr(parent, name, wrapped.merged())
    for p in new.parameters():
        p.requires_grad_(True)
    return new.eval()
