"""The one architecture every synth model shares: stories260K's exact shape.

Keeping a single shape means every pair of synth models (and stories260K itself) can be
compared tensor by tensor, and independent pairs are a fair null for derived pairs.
"""
from __future__ import annotations

from transformers import LlamaConfig

STORIES260K_SHAPE: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 5,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 512,
}
BOS_ID = 1  # llama2.c's tok512: 0 <unk>, 1 <s> (BOS, separates stories), 2 </s>
EOS_ID = 2
BASE_ROPE_THETA = 10000.0
BASE_CONTEXT = 512


def synth_config(rope_theta: float = BASE_ROPE_THETA, max_position_embeddings: int = BASE_CONTEXT) -> LlamaConfig:
    """A ``LlamaConfig`` with stories260K's shape and llama2.c's conventions."""
    return LlamaConfig(
        **STORIES260K_SHAPE,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        # ``rope_theta`` is accepted by transformers 4.x directly and folded into
        # ``rope_parameters`` by 5.x, so one spelling serves both.
        rope_theta=rope_theta,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        attention_dropout=0.0,
    )


def rope_theta_of(config: LlamaConfig) -> float:
    """The RoPE base of a config under either transformers major version."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.rope_theta)
