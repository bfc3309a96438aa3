"""Validation: summed cross-entropy and target bytes over the whole val split (or a prefix), split across ranks."""
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


def windows(num_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, length) of consecutive non-overlapping windows covering every target once."""
    targets = num_tokens - 1
    return [(s, min(seq_len, targets - s)) for s in range(0, targets, seq_len)]


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
) -> EvalResult:
    """Score every target token of val_tokens once; ranks take interleaved full windows, rank 0 the tail."""
    spans = windows(len(val_tokens), seq_len)
    full = [s for s, n in spans if n == seq_len]
    tail = [(s, n) for s, n in spans if n < seq_len]
    mine = full[rank::world_size]
    per_batch = max(batch_tokens // (seq_len * world_size), 1)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    table = table.to(device)
    was_training = model.training
    model.eval()

    def score(starts: list[int], length: int, net: nn.Module = model) -> None:
        idx = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(length + 1)[None, :]
        chunk = val_tokens[idx].to(device, non_blocking=True)
        x, y = chunk[:, :-1], chunk[:, 1:]
        nats = net(x, y, reduction="none")
        totals[0] += nats.double().sum()
        totals[1] += y.numel()
        totals[2] += target_bytes(table, x, y).double().sum()

    for i in range(0, len(mine), per_batch):
        score(mine[i : i + per_batch], seq_len)
    if rank == 0:
        for start, length in tail:
            # The short tail runs uncompiled so a compiled model is not recompiled for one odd shape.
            score([start], length, getattr(model, "_orig_mod", model))
    if world_size > 1:
        dist.all_reduce(totals)
    model.train(was_training)
    nats, tokens, nbytes = totals.tolist()
    return EvalResult(sum_nats=nats, tokens=int(tokens), bytes=int(nbytes))
