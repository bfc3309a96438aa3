"""Mixed widths judged by measured bytes (export.upgrade_fit: measured): upgrade down the sensitivity ranking as
far as the compressed artifact really fits, not only as far as the size model's safety margin allows.

The size model prices every prefix of the ranking (the n most sensitive matrices upgraded). On one run's weights
its error is close to a straight line in its own prediction, so a line through the measured prefixes (through the
origin for one, a secant for two) picks the next prefix to compress. Each try packs and compresses the payload;
the largest prefix whose artifact measured under the limit is kept, after at most MAX_ENCODES compressions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer import artifact
from trainer.bit_allocation import rank
from trainer.run_config import RunConfig
from trainer.sizing.size_model import predict, upgrade_cap

MAX_ENCODES = 3
# Guesses aim this fraction of the limit below it, so that the line's error rarely costs a compression.
AIM_FRACTION = 0.002


@dataclass(frozen=True)
class Filled:
    """The kept payload, its compressed file bytes, every prefix tried with its measured model bytes, and the most
    model bytes that fit (the limit less the code bytes)."""

    payload: bytes
    blob: bytes
    upgraded: int
    tried: tuple[tuple[int, int], ...]  # (matrices upgraded, measured model bytes), in the order tried
    budget_bytes: int

    def describe(self) -> str:
        """One line: each try and whether it fit, then what was kept."""
        tries = ", ".join(f"{n} -> {size:,}{'' if size <= self.budget_bytes else ' (over)'}" for n, size in self.tried)
        return f"upgrades by measured bytes: {tries}; kept {self.upgraded}"


def next_count(predicted: list[int], measured: dict[int, int], budget_bytes: int, aim_bytes: int) -> int | None:
    """The next prefix to compress, or None when there is none worth trying.

    predicted[n]: the size model's model bytes with the first n matrices upgraded (rising in n).
    measured: model bytes compressed so far, by n. budget_bytes: the most model bytes that fit (limit - code).
    A line through the two measured points nearest the budget (or through the origin and the one point) maps
    predicted to measured bytes; the answer is the largest n, strictly between the largest n measured to fit and
    the smallest measured over, whose mapped bytes are at most budget - aim (else at most budget).
    """
    fits = [n for n, size in measured.items() if size <= budget_bytes]
    over = [n for n, size in measured.items() if size > budget_bytes]
    low = max(fits, default=-1)
    high = min(over, default=len(predicted))
    if high - low <= 1:
        return None
    near = sorted(measured, key=lambda n: abs(measured[n] - budget_bytes))[:2]
    if len(near) == 2 and predicted[near[0]] != predicted[near[1]]:
        (n0, n1) = near
        slope = (measured[n1] - measured[n0]) / (predicted[n1] - predicted[n0])
        offset = measured[n0] - slope * predicted[n0]
    else:
        slope, offset = measured[near[0]] / predicted[near[0]], 0.0
    untried = range(low + 1, high)
    for target in (budget_bytes - aim_bytes, budget_bytes):
        inside = [n for n in untried if offset + slope * predicted[n] <= target]
        if inside:
            return max(inside)
    return 0 if low < 0 and 0 in untried else None  # nothing fits yet: the smallest artifact is the best left


def fill(state: dict[str, torch.Tensor], cfg: RunConfig, hessians: dict[str, torch.Tensor] | None) -> Filled:
    """Pack and compress prefixes of the sensitivity ranking until the largest that fits is found (see module)."""
    ranking = rank(state, cfg, hessians)[:upgrade_cap(cfg)]
    width = cfg.export.upgrade_bits

    def bits(n: int) -> dict[str, int]:
        return dict.fromkeys(ranking[:n], width)

    predictions = [predict(cfg, bits=bits(n)) for n in range(len(ranking) + 1)]
    predicted = [p.predicted_model_bytes for p in predictions]
    code = artifact.code_bytes()
    budget = cfg.export.limit_bytes - code
    start = max((n for n, p in enumerate(predictions) if p.fits), default=0)
    measured: dict[int, int] = {}
    blobs: dict[int, tuple[bytes, bytes]] = {}
    n: int | None = start
    while n is not None and len(measured) < MAX_ENCODES:
        payload = artifact.pack(state, cfg, hessians, bits=bits(n))
        blob = artifact.encode(payload, cfg.export)
        measured[n] = len(blob)
        blobs[n] = (payload, blob)
        n = next_count(predicted, measured, budget, int(AIM_FRACTION * cfg.export.limit_bytes))
    fitting = [n for n, size in measured.items() if size <= budget]
    kept = max(fitting) if fitting else min(measured, key=measured.get)
    payload, blob = blobs[kept]
    return Filled(payload, blob, kept, tuple(measured.items()), budget)
