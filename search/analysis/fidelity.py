"""Rung fidelity: does a rung's val_bpb rank trials as their final val_bpb does? (Spearman per rung)."""
from __future__ import annotations

import itertools
import math
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

MIN_TRIALS = 3  # below this a rank correlation says nothing
EXACT_PERMUTATION_N = 8  # 8! = 40,320 pairings: exact below this, sampled above
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


def milestone(train_s: float, every_s: float, asha: Sequence[float] = ()) -> float | None:
    """The report milestone a report at train_s belongs to: the last scheduled time reached, a multiple of
    every_s (periodic reports; 0: none) or an ASHA rung; None before the first."""
    if every_s < 0 or (every_s == 0 and not asha):
        raise ValueError(f"every_s is {every_s} and no ASHA rungs; pass the search's report schedule "
                         "(settings.report_every_s >= 0, and its ASHA rungs)")
    reached = [a for a in asha if a <= train_s + 1e-6]  # reports come at or after their time
    if every_s > 0:
        reached.append(math.floor(train_s / every_s + 1e-9) * every_s)
    last = max(reached, default=0.0)
    return round(last, 6) if last > 0 else None


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
    # One-sided permutation p-value of spearman > 0: with the few trials a search completes, how often a
    # random ranking agrees as well (n = 4 cannot show anything below p = 1/24).
    p_positive: float | None = None
    # With train.rung_cooldown_fraction: the same trials' scores before the cooldown, against the same finals.
    spearman_before_cooldown: float | None = None
    # What cutting at this rung would cost: where the trial with the best final ranked here (1 = first), and how
    # much worse the best final among the rung's best keep_fraction of trials is than the best final of all.
    best_final_rank: int | None = None
    regret_kept: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def permutation_p(x: Sequence[float], y: Sequence[float], draws: int = 20_000, seed: int = 0,
                  exact_max_n: int = EXACT_PERMUTATION_N) -> float | None:
    """One-sided p-value of Spearman(x, y) > 0 under random pairing: exact over every pairing up to exact_max_n
    values, else from `draws` seeded shuffles (counting the observed pairing)."""
    observed = spearman(x, y)
    if observed is None:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    tol = 1e-12  # ties in rho between pairings count as "at least as large"
    if len(x) <= exact_max_n:
        pairings = list(itertools.permutations(ry))
        hits = sum(1 for perm in pairings if (pearson(rx, perm) or 0.0) >= observed - tol)
        return hits / len(pairings)
    rng = random.Random(seed)
    shuffled, hits = list(ry), 1
    for _ in range(draws):
        rng.shuffle(shuffled)
        hits += (pearson(rx, shuffled) or 0.0) >= observed - tol
    return hits / (draws + 1)


def milestone_values(rungs: Mapping[Hashable, Sequence[Sequence[float]]], every_s: float,
                     asha: Sequence[float] = ()) -> dict[float, dict[Hashable, float]]:
    """Per milestone, each trial's rung val_bpb there (its last finite report in that milestone)."""
    at: dict[float, dict[Hashable, float]] = {}
    for trial, reports in rungs.items():
        for train_s, value in reports:
            m = milestone(float(train_s), every_s, asha)
            if m is not None and value is not None and math.isfinite(float(value)):
                at.setdefault(m, {})[trial] = float(value)
    return at


def cut_cost(rung: Sequence[float], final: Sequence[float], keep_fraction: float) -> tuple[int, float]:
    """What a cut at a rung costs, one pair per trial: the rung rank (1 = lowest rung value; ties take the best
    rank) of the trial with the lowest final, and the lowest final among the trials a cut keeping
    ceil(n * keep_fraction) keeps (those ranked within it; ties at the cut are all kept) minus the lowest final
    of all (0: the cut keeps the winner)."""
    if len(rung) != len(final) or not rung:
        raise ValueError(f"cut_cost: {len(rung)} rung values and {len(final)} finals; pass one pair per trial, "
                         "at least one")
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"cut_cost: keep_fraction {keep_fraction} must be in (0, 1], e.g. 1 / reduction_factor")

    def rank(i: int) -> int:
        return 1 + sum(1 for v in rung if v < rung[i])

    winner = min(range(len(final)), key=lambda i: final[i])
    keep = math.ceil(len(rung) * keep_fraction - 1e-9)
    return rank(winner), min(final[i] for i in range(len(rung)) if rank(i) <= keep) - final[winner]


def score_milestones(
    at: Mapping[float, Mapping[Hashable, float]],
    finals: Mapping[Hashable, float],
    asha: Sequence[float] = (),
    finals_prequant: Mapping[Hashable, float] | None = None,
    at_before_cooldown: Mapping[float, Mapping[Hashable, float]] | None = None,
    keep_fraction: float | None = None,
) -> list[RungFidelity]:
    """Spearman of each milestone's rung values against the finals, over the trials that have both (and of the
    values before each rung's cooldown, where every one of those trials has one); with keep_fraction (ASHA's
    1 / reduction_factor), also what a cut keeping that share at the milestone would cost (cut_cost)."""
    asha_set = {round(a, 6) for a in asha}
    out = []
    for m in sorted(at):
        both = sorted((t for t in at[m] if _finite(finals.get(t))), key=repr)
        enough = len(both) >= MIN_TRIALS
        xs, ys = [at[m][t] for t in both], [float(finals[t]) for t in both]
        rho = spearman(xs, ys) if enough else None
        rho_pre = None
        if enough and finals_prequant is not None and all(_finite(finals_prequant.get(t)) for t in both):
            rho_pre = spearman(xs, [float(finals_prequant[t]) for t in both])
        note = TOO_FEW if not enough else (ALL_TIED if rho is None else "")
        p = permutation_p(xs, ys) if rho is not None else None
        before = (at_before_cooldown or {}).get(m, {})
        rho_before = (spearman([before[t] for t in both], ys)
                      if enough and before and all(t in before for t in both) else None)
        rank, regret = cut_cost(xs, ys, keep_fraction) if enough and keep_fraction else (None, None)
        out.append(RungFidelity(m, len(both), rho, m in asha_set, note, rho_pre, p, rho_before, rank, regret))
    return out


def rung_fidelity(
    rungs: Mapping[int, Sequence[Sequence[float]]],
    finals: Mapping[int, float],
    every_s: float,
    asha: Sequence[float] = (),
    finals_prequant: Mapping[int, float] | None = None,
) -> list[RungFidelity]:
    """Per milestone (ASHA rungs, multiples of every_s): Spearman(rung val_bpb, final val_bpb) over trials in
    both rungs and finals, with its n; with finals_prequant, also against those values over the same trials
    (None where one is missing)."""
    return score_milestones(milestone_values(rungs, every_s, asha), finals, asha, finals_prequant)
