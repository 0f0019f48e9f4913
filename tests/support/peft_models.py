"""LoRA adapters written by PEFT itself (``save_pretrained``) on a tiny transformers model, and
their merges (``merge_and_unload`` then transformers' ``save_pretrained``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

UPDATE_SCALE = 0.01
"""``lora_B`` starts at zero in PEFT; it is drawn at random here and scaled so the update is a
few percent of the weights, as after a real fine-tune (relative delta 2-4% on the tiny model)."""


def save_adapter(base: Path, out: Path, seed: int, r: int = 4, alpha: float = 8.0,
                 targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "down_proj"), **config: Any) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False,
                                      **config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.mul_(UPDATE_SCALE)
    model.save_pretrained(out)
    return out


def save_merged(base: Path, adapter: Path, out: Path, dtype: str = "float32") -> Path:
    """The adapter merged into the base loaded in ``dtype`` (how merges are usually published)."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
    return out
