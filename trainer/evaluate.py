"""Validation: summed cross-entropy and target bytes over the whole val split (or a prefix), split across ranks,
in consecutive or sliding windows."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from trainer.bpb import ByteTable, bits_per_byte, target_bytes


@dataclass(frozen=True)
class EvalResult:
    """Validation totals and the two figures derived from them."""

    sum_nats: float
    tokens: int
    bytes: int

    @property
    def val_loss(self) -> float:
        return self.sum_nats / self.tokens

    @property
    def val_bpb(self) -> float:
        return bits_per_byte(self.sum_nats, self.bytes)


def sliding_windows(num_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, length, first scored offset) of windows of seq_len every `stride` tokens over num_tokens tokens.

    The first window scores all its targets, each later one the targets no earlier window scored (its last
    `stride`); the last stops at the end of the split. With stride = seq_len: consecutive windows, each scored whole.
    """
    targets = num_tokens - 1
    spans, scored_to, start = [], 0, 0
    while scored_to < targets:
        length = min(seq_len, targets - start)
        spans.append((start, length, scored_to - start))
        scored_to = start + length
        start += stride
    return spans


def windows(num_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, length) of consecutive non-overlapping windows covering every target once."""
    return [(start, length) for start, length, _ in sliding_windows(num_tokens, seq_len, seq_len)]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    val_tokens: torch.Tensor,
    table: ByteTable,
    seq_len: int,
    batch_tokens: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    stride: int = 0,
) -> EvalResult:
    """Score every target token of val_tokens once, in windows of seq_len every `stride` tokens (0: seq_len, plain
    evaluation; smaller: sliding windows, every target but the first window's with >= seq_len - stride tokens of
    context). Ranks take interleaved full windows, rank 0 the short tail, in batches of batch_tokens over all ranks."""
    spans = sliding_windows(len(val_tokens), seq_len, stride or seq_len)
    full = [(s, first) for s, n, first in spans if n == seq_len]
    tail = [(s, n, first) for s, n, first in spans if n < seq_len]
    mine = full[rank::world_size]
    per_batch = max(batch_tokens // (seq_len * world_size), 1)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    table = table.to(device)
    was_training = model.training
    model.eval()

    def score(starts: list[int], firsts: list[int], length: int, net: nn.Module = model) -> None:
        idx = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(length + 1)[None, :]
        chunk = val_tokens[idx].to(device, non_blocking=True)
        x, y = chunk[:, :-1], chunk[:, 1:]
        scored = torch.arange(length, device=device)[None, :] >= torch.tensor(firsts, device=device)[:, None]
        nats = net(x, y, reduction="none").view(len(starts), length)
        totals[0] += nats.double()[scored].sum()
        totals[1] += scored.sum()
        totals[2] += target_bytes(table, x, y)[scored].double().sum()

    for i in range(0, len(mine), per_batch):
        batch = mine[i : i + per_batch]
        score([s for s, _ in batch], [first for _, first in batch], seq_len)
    if rank == 0:
        for start, length, first in tail:
            # The short tail runs uncompiled so a compiled model is not recompiled for one odd shape.
            score([start], [first], length, getattr(model, "_orig_mod", model))
    if world_size > 1:
        dist.all_reduce(totals)
    model.train(was_training)
    nats, tokens, nbytes = totals.tolist()
    return EvalResult(sum_nats=nats, tokens=int(tokens), bytes=int(nbytes))
