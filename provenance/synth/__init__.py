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
``docs/synth.md``. Training and loading need ``transformers`` (the ``synth`` extra); locating
the shipped files does not.
"""
from __future__ import annotations

# Lazy: the model-family code needs transformers (the `synth` extra), while finding the
# shipped files (`synth_model_path`) must work without it.
_EXPORTS = {
    "CorpusSpec": "provenance.synth.corpus",
    "FINETUNE_SPEC": "provenance.synth.corpus",
    "FINETUNE_STRENGTHS": "provenance.synth.train",
    "Llama2cModel": "provenance.synth.llama2c",
    "Llama2cWeights": "provenance.synth.llama2c",
    "PRETRAIN_RECIPE": "provenance.synth.train",
    "PRETRAIN_SPEC": "provenance.synth.corpus",
    "STORIES260K_SHAPE": "provenance.synth.arch",
    "SynthModelNotFound": "provenance.synth.store",
    "TrainRecipe": "provenance.synth.train",
    "continued_pretraining": "provenance.synth.train",
    "eval_loss": "provenance.synth.train",
    "finetune": "provenance.synth.train",
    "init_model": "provenance.synth.train",
    "llama2c_to_hf": "provenance.synth.convert",
    "load_llama2c": "provenance.synth.llama2c",
    "load_manifest": "provenance.synth.store",
    "load_stories260k_as_hf": "provenance.synth.convert",
    "load_synth_model": "provenance.synth.store",
    "load_synth_tokens": "provenance.synth.store",
    "lora_finetune": "provenance.synth.lora",
    "model_ids": "provenance.synth.store",
    "sample_corpus": "provenance.synth.corpus",
    "split_pretrain": "provenance.synth.corpus",
    "synth_config": "provenance.synth.arch",
    "synth_data_dir": "provenance.synth.store",
    "synth_model_path": "provenance.synth.store",
    "train": "provenance.synth.train",
    "train_independent": "provenance.synth.train",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'provenance.synth' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "FINETUNE_SPEC",
    "FINETUNE_STRENGTHS",
    "PRETRAIN_RECIPE",
    "PRETRAIN_SPEC",
    "STORIES260K_SHAPE",
    "CorpusSpec",
    "Llama2cModel",
    "Llama2cWeights",
    "SynthModelNotFound",
    "TrainRecipe",
    "continued_pretraining",
    "eval_loss",
    "finetune",
    "init_model",
    "llama2c_to_hf",
    "load_llama2c",
    "load_manifest",
    "load_stories260k_as_hf",
    "load_synth_model",
    "load_synth_tokens",
    "lora_finetune",
    "model_ids",
    "sample_corpus",
    "split_pretrain",
    "synth_config",
    "synth_data_dir",
    "synth_model_path",
    "train",
    "train_independent",
]
