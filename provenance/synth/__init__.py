"""Deterministic tiny Llama model families: ground truth for lineage tests and calibration.

* :mod:`.llama2c`  strict loader and torch forward for llama2.c ``.bin`` (stories260K)
* :mod:`.convert`  llama2.c -> HF ``LlamaForCausalLM`` (q/k row order fixed)
* :mod:`.corpus`   the shared training corpus, sampled from stories260K
* :mod:`.train`    deterministic pretraining, full fine-tunes, continued pretraining
* :mod:`.lora`     LoRA fine-tunes merged into dense weights
* :mod:`.store`    shipped checkpoints under ``data/synth``: paths, hashes, manifest

Every model has stories260K's exact shape, so any two can be compared tensor by tensor.
The shipped pool (``scripts/build_synth_models.py``) holds independently trained models
for null distributions and derivatives with known parents for positives; see
``docs/synth.md``. Needs ``transformers`` (a dev extra of the package).
"""
from __future__ import annotations

from provenance.synth.arch import STORIES260K_SHAPE, synth_config
from provenance.synth.convert import llama2c_to_hf, load_stories260k_as_hf
from provenance.synth.corpus import FINETUNE_SPEC, PRETRAIN_SPEC, CorpusSpec, sample_corpus, split_pretrain
from provenance.synth.llama2c import Llama2cWeights, Llama2cModel, load_llama2c
from provenance.synth.lora import lora_finetune
from provenance.synth.store import (
    SynthModelNotFound,
    load_manifest,
    load_synth_model,
    load_synth_tokens,
    model_ids,
    synth_data_dir,
    synth_model_path,
)
from provenance.synth.train import (
    FINETUNE_STRENGTHS,
    PRETRAIN_RECIPE,
    TrainRecipe,
    continued_pretraining,
    eval_loss,
    finetune,
    init_model,
    train,
    train_independent,
)

__all__ = [
    "CorpusSpec", "FINETUNE_SPEC", "FINETUNE_STRENGTHS", "Llama2cWeights", "Llama2cModel",
    "PRETRAIN_RECIPE", "PRETRAIN_SPEC", "STORIES260K_SHAPE", "SynthModelNotFound", "TrainRecipe",
    "continued_pretraining", "eval_loss", "finetune", "init_model", "llama2c_to_hf", "load_llama2c",
    "load_manifest", "load_stories260k_as_hf", "load_synth_model", "load_synth_tokens", "lora_finetune",
    "model_ids", "sample_corpus", "split_pretrain", "synth_config", "synth_data_dir", "synth_model_path",
    "train", "train_independent",
]
