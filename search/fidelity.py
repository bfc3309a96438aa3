"""Rung fidelity: does a rung's val_bpb rank trials as their final val_bpb does? (Spearman per rung)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

MIN_TRIALS = 3  # below this a rank correlation says nothing
TOO_FEW = "too few trials"
ALL_TIED = "undefined: all values tied"


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of values; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length sequences; None when either is constant or shorter than 2."""
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} x values but {len(y)} y values; pass one pair per trial")
    if len(x) < 2:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation: Pearson on average ranks; None when undefined (constant side, < 2 pairs)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values; pass one pair per trial")
    return pearson(average_ranks(x), average_ranks(y))


def milestone(train_s: float, rung_s: float) -> float:
    """The report milestone (a multiple of rung_s) a rung report at train_s belongs to: the last one reached."""
    if rung_s <= 0:
        raise ValueError(f"rung_s is {rung_s}; pass the search's report interval (settings.rung_s, > 0)")
    return round(math.floor(train_s / rung_s + 1e-9) * rung_s, 6)


def asha_rungs(rung_s: float, reduction_factor: float, max_t: float) -> list[float]:
    """ASHA's decision points: rung_s * rf^k up to max_t (the other milestones are reports only)."""
    out, t = [], rung_s
    while t <= max_t * (1 + 1e-6):
        out.append(round(t, 6))
        t *= reduction_factor
    return out


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


@dataclass(frozen=True)
class RungFidelity:
    """Rank agreement at one milestone between the rung's val_bpb and the final val_bpb."""

    rung_s: float
    n: int
    spearman: float | None
    asha: bool = False
    note: str = ""
    spearman_prequant: float | None = None  # against the final pre-quantization val_bpb (same trials)

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def rung_fidelity(
    rungs: Mapping[int, Sequence[Sequence[float]]],
    finals: Mapping[int, float],
    rung_s: float,
    asha: Sequence[float] = (),
    finals_prequant: Mapping[int, float] | None = None,
) -> list[RungFidelity]:
    """Per milestone: Spearman(rung val_bpb, final val_bpb) over trials in both rungs and finals, with its n;
    with finals_prequant, also against those values over the same trials (None where one is missing)."""
    at: dict[float, dict[int, float]] = {}
    for trial, reports in rungs.items():
        for train_s, value in reports:
            if value is not None and math.isfinite(float(value)):
                at.setdefault(milestone(float(train_s), rung_s), {})[trial] = float(value)
    asha_set = {round(a, 6) for a in asha}
    out = []
    for m in sorted(at):
        both = sorted(t for t in at[m] if t in finals and finals[t] is not None and math.isfinite(float(finals[t])))
        enough = len(both) >= MIN_TRIALS
        rho = spearman([at[m][t] for t in both], [float(finals[t]) for t in both]) if enough else None
        rho_pre = None
        if enough and finals_prequant is not None and all(_finite(finals_prequant.get(t)) for t in both):
            rho_pre = spearman([at[m][t] for t in both], [float(finals_prequant[t]) for t in both])
        note = TOO_FEW if not enough else (ALL_TIED if rho is None else "")
        out.append(RungFidelity(m, len(both), rho, m in asha_set, note, rho_pre))
    return out
