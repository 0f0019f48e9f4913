"""The one training corpus every synth model sees: token ids sampled from stories260K.

Independent models used as a lineage null must be trained on the *same data* (two
models trained on different data are easier to tell apart than two honest
independent trainings, and the null would be too easy). The real stories260K was
trained on TinyStories in a 512-token vocabulary that is not shipped with its weights;
sampling from the model itself at temperature 1.0 gives TinyStories-like token streams
in exactly that vocabulary, from its own learned distribution.

Rows are 512-token windows starting with BOS. Like llama2.c's pretraining data they run
across story boundaries (the model emits BOS to start a new story and keeps going), so
they are drawn from the distribution stories260K was trained on.

Two corpora are sampled, with different seeds:

* ``corpus``: temperature 1.0, for pretraining; the last rows are held out for eval.
* ``finetune``: temperature 0.8, a genuinely *shifted* distribution (lower entropy,
  more stereotyped stories) for fine-tunes, so a fine-tune really moves its weights
  towards new data rather than continuing its own pretraining.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from provenance.synth.arch import BOS_ID
from provenance.synth.llama2c import Llama2cModel, load_llama2c


@dataclass(frozen=True)
class CorpusSpec:
    n_rows: int
    seed: int
    temperature: float
    row_len: int = 512


PRETRAIN_SPEC = CorpusSpec(n_rows=640, seed=20260401, temperature=1.0)
FINETUNE_SPEC = CorpusSpec(n_rows=96, seed=20260402, temperature=0.8)
EVAL_ROWS = 32
"""Rows at the end of the pretraining corpus never used for training (eval loss)."""
FINETUNE_EVAL_ROWS = 16
"""Rows at the end of the fine-tuning corpus never used for training."""


@torch.no_grad()
def sample_corpus(model_path: str | os.PathLike[str], n_rows: int, seed: int,
                  temperature: float = 1.0, row_len: int = 512, batch: int = 128) -> np.ndarray:
    """Sample ``n_rows`` rows of ``row_len`` token ids (uint16) from a llama2.c model.

    Row ``r`` depends only on (seed, r // batch's batch) and the model, so the result
    is reproducible on one torch build; across CPUs/torch versions a last-bit change in
    a logit can flip one draw and change the rest of its row (the corpus is therefore
    shipped as a file, with its sha256 in the manifest, rather than re-derived).
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive (greedy sampling gives one story)")
    model = Llama2cModel(load_llama2c(model_path))
    if row_len > model.config.seq_len:
        raise ValueError(f"row_len {row_len} exceeds the model's context {model.config.seq_len}")
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((n_rows, row_len), dtype=np.uint16)
    for start in range(0, n_rows, batch):
        b = min(batch, n_rows - start)
        tokens = torch.full((b, row_len), BOS_ID, dtype=torch.long)
        cache = model.new_cache(b, row_len)
        for pos in range(row_len - 1):
            logits = model(tokens[:, pos:pos + 1], pos, cache)[:, -1].double()
            probs = torch.softmax(logits / temperature, dim=-1)
            tokens[:, pos + 1] = torch.multinomial(probs, 1, generator=gen)[:, 0]
        out[start:start + b] = tokens.numpy().astype(np.uint16)
    return out


def split_heldout(corpus: np.ndarray, eval_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) rows: the last ``eval_rows`` rows are held out."""
    if not 0 < eval_rows < len(corpus):
        raise ValueError(f"cannot hold out {eval_rows} of {len(corpus)} rows")
    return corpus[:-eval_rows], corpus[-eval_rows:]


def split_pretrain(corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) rows of the pretraining corpus."""
    return split_heldout(corpus, EVAL_ROWS)


def split_finetune(corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) rows of the fine-tuning corpus."""
    return split_heldout(corpus, FINETUNE_EVAL_ROWS)
