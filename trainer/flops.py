"""Model FLOPs per training token and MFU (pure functions).

Counted the usual way (forward + backward = 3 x forward, 2 FLOPs per multiply-add): every matrix a
virtual layer runs counts once per run, so a block repeated twice costs twice; causal attention
scores and the weighted sum count half of the full T x T square. Norms, rotary, softmax and the
elementwise techniques (XSA, gates, lanes) are left out, so MFU is comparable with the figures people
quote for GPT training. recurrence_on=False counts the schedule without its repeats (set_recurrence).
"""
from __future__ import annotations

from trainer.model_config import ModelConfig
from trainer.schedule import active_schedule

H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM dense bf16 peak, the figure MFU is quoted against


def matmul_params_per_token(cfg: ModelConfig, recurrence_on: bool = True) -> int:
    """Weights each token is multiplied by once in a forward pass (repeats counted per run)."""
    d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    attention, mlp = d * d + 2 * kv * d + d * d, 2 * cfg.mlp_hidden * d
    steps = active_schedule(cfg, recurrence_on)
    layers = sum(mlp + (attention if step.attention else 0) for step in steps)
    extras = (cfg.bigram_dim * d if cfg.bigram_buckets else 0) + cfg.value_embed_dim * kv  # projected once per token
    return layers + extras + cfg.vocab_size * d  # + the tied output projection


def flops_per_token(cfg: ModelConfig, seq_len: int, recurrence_on: bool = True) -> float:
    """Training FLOPs per token: 6 per weight, plus causal attention's QK^T and AV (6 * d * T per attention layer)."""
    attention_layers = sum(step.attention for step in active_schedule(cfg, recurrence_on))
    attention = 6 * cfg.model_dim * seq_len * attention_layers  # 12 * d * T halved by the causal mask
    return 6 * matmul_params_per_token(cfg, recurrence_on) + attention


def mfu(cfg: ModelConfig, seq_len: int, tokens_per_s: float, world_size: int = 1,
        peak_flops: float = H100_BF16_DENSE_FLOPS) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak of all GPUs used."""
    return flops_per_token(cfg, seq_len) * tokens_per_s / (peak_flops * world_size)
