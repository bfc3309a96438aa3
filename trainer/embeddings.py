"""Token inputs beside the tied embedding: hashed bigrams, value embeddings and the smear gate."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.model_config import ModelConfig

MASK32 = 0xFFFFFFFF
# Odd and < 2**31, so a 32-bit pair id times it stays inside int64.
HASH_MULT = 0x5BD1E995


def bigram_bucket(ids: torch.Tensor, vocab_size: int, buckets: int) -> torch.Tensor:
    """Bucket of each (previous, current) token pair in 1..buckets-1; position 0 has no pair and gets bucket 0."""
    pair = (ids[..., :-1].long() * vocab_size + ids[..., 1:].long()) & MASK32
    h = (pair * HASH_MULT) & MASK32
    h = h ^ (h >> 15)  # fold the well-mixed high bits into the low ones the modulo reads
    return torch.cat((torch.zeros_like(pair[..., :1]), 1 + h % (buckets - 1)), dim=-1)


class BigramEmbedding(nn.Module):
    """A zero-initialised table over bigram buckets, projected to model width, times a learned scale."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.vocab_size, self.buckets = cfg.vocab_size, cfg.bigram_buckets
        self.table = nn.Embedding(cfg.bigram_buckets, cfg.bigram_dim)
        nn.init.zeros_(self.table.weight)
        self.proj = nn.Linear(cfg.bigram_dim, cfg.model_dim, bias=False)
        self.scale = nn.Parameter(torch.full((1,), 0.05))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(bigram_bucket(ids, self.vocab_size, self.buckets))) * self.scale


class ValueEmbedding(nn.Module):
    """One token table projected to the values' width; `scales` holds one learned scale per listed depth."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.table = nn.Embedding(cfg.vocab_size, cfg.value_embed_dim)
        nn.init.normal_(self.table.weight, std=0.01)
        self.proj = nn.Linear(cfg.value_embed_dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.scales = nn.Parameter(torch.full((len(cfg.value_embed_layers),), 0.1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Unscaled values to add, (B, T, kv width)."""
        return self.proj(self.table(ids))


def smear(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x <- (1 - s) x + s x_prev per channel, s = sigmoid(gate); position 0's x_prev is zero."""
    prev = F.pad(x[:, :-1], (0, 0, 1, 0))
    return torch.lerp(x, prev, torch.sigmoid(gate.to(x.dtype)))
