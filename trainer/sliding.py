"""Sliding-window evaluation: every val token scored once, with the longest context its window gives.

Windows of seq_len start every `stride` tokens. The first scores all its targets; each later one scores the targets
no earlier window scored, its last `stride`; the last window stops at the end of the split (shorter, like plain
evaluation's tail). With stride = seq_len this is plain evaluation (trainer.evaluate); a smaller stride gives every
target but the first window's at least seq_len - stride tokens of context, at seq_len / stride times the compute.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from trainer.bpb import ByteTable, target_bytes
from trainer.evaluate import EvalResult


def sliding_windows(num_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, length, first scored offset) of each window over num_tokens tokens (num_tokens - 1 targets)."""
    targets = num_tokens - 1
    spans, scored_to, start = [], 0, 0
    while scored_to < targets:
        length = min(seq_len, targets - start)
        spans.append((start, length, scored_to - start))
        scored_to = start + length
        start += stride
    return spans


@torch.no_grad()
def evaluate_sliding(
    model: nn.Module,
    val_tokens: torch.Tensor,
    table: ByteTable,
    seq_len: int,
    stride: int,
    batch_tokens: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> EvalResult:
    """Score every target of val_tokens once by sliding windows; ranks take interleaved full windows, rank 0 the
    short tail, in batches of batch_tokens over all ranks (as trainer.evaluate batches them)."""
    spans = sliding_windows(len(val_tokens), seq_len, stride)
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
