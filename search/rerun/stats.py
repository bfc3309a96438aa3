"""Seed statistics and the challenge's significance test, without scipy.

The record criterion: a new record must beat the current one by at least 0.005 nats of val_loss
(mean cross-entropy per token, natural log), shown at p < 0.01 across seeds. `record_criterion`
takes val_loss lists (nats) directly, as metrics.json records them; `bpb_to_nats` converts val_bpb
when only that is known (it needs the val split's token and byte counts). The test is Welch's
one-sided t-test of H0: mean(baseline) - mean(candidate) <= margin against H1: > margin, so the
p-value speaks to the 0.005-nat win itself, not merely to any improvement.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

MIN_GAIN_NATS = 0.005
ALPHA = 0.01
_CF_EPS = 1e-15
_CF_TINY = 1e-300
_CF_MAX_ITERATIONS = 100_000


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (n-1) of one metric over seeds."""

    n: int
    mean: float
    std: float
    min: float
    max: float


def summarize(values: Sequence[float]) -> SeedSummary:
    """Summary of per-seed values; std is 0.0 for a single seed."""
    if not values:
        raise ValueError("no values to summarize; pass at least one seed's result")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return SeedSummary(len(values), statistics.fmean(values), std, min(values), max(values))


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), by the continued fraction (modified Lentz), using the symmetry that makes it converge."""
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete beta needs a, b > 0 (got a={a}, b={b})")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs 0 <= x <= 1 (got {x})")
    if x == 0.0 or x == 1.0:
        return x
    # The fraction converges fast for x < (a+1)/(a+b+2); otherwise evaluate 1 - I_{1-x}(b, a).
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_incomplete_beta(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
    h = d
    for m in range(1, _CF_MAX_ITERATIONS + 1):
        # Even step d_{2m}, then odd step d_{2m+1}, of the fraction's coefficients.
        for coef in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                     -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + coef * d
            d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
            c = 1.0 + coef / c
            c = c if abs(c) > _CF_TINY else _CF_TINY
            step = c * d
            h *= step
        if abs(step - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def student_t_sf(t: float, dof: float) -> float:
    """P(T > t) for Student's t with dof degrees of freedom (dof may be fractional, as Welch's is)."""
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be positive (got {dof})")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    # P(|T| > |t|) = I_{dof/(dof+t^2)}(dof/2, 1/2); half of it is the one-sided tail.
    tail = 0.5 * regularized_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))
    return tail if t >= 0 else 1.0 - tail


def student_t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t."""
    return 1.0 - student_t_sf(t, dof)


@dataclass(frozen=True)
class WelchResult:
    """One-sided Welch test that the candidate is lower (better) than the baseline by more than margin."""

    t: float
    dof: float
    p_value: float
    mean_gain: float  # mean(baseline) - mean(candidate): positive when the candidate is better
    margin: float = 0.0


def welch_one_sided(candidate: Sequence[float], baseline: Sequence[float], margin: float = 0.0) -> WelchResult:
    """Welch's t-test of H1: mean(baseline) - mean(candidate) > margin (lower val_bpb/val_loss is better)."""
    if len(candidate) < 2 or len(baseline) < 2:
        raise ValueError(
            f"Welch's test needs at least 2 seeds per side (got {len(candidate)} candidate, {len(baseline)} "
            "baseline); run more seeds"
        )
    mc, mb = statistics.fmean(candidate), statistics.fmean(baseline)
    vc, vb = statistics.variance(candidate) / len(candidate), statistics.variance(baseline) / len(baseline)
    gain = mb - mc
    excess = gain - margin
    if vc + vb == 0.0:
        # Identical seeds on both sides: no noise, so the sign of the excess decides outright.
        dof = float(len(candidate) + len(baseline) - 2)
        if excess == 0.0:
            return WelchResult(0.0, dof, 0.5, gain, margin)
        return WelchResult(math.copysign(math.inf, excess), dof, 0.0 if excess > 0 else 1.0, gain, margin)
    se = math.sqrt(vc + vb)
    dof = (vc + vb) ** 2 / (vc**2 / (len(candidate) - 1) + vb**2 / (len(baseline) - 1))
    t = excess / se
    return WelchResult(t, dof, student_t_sf(t, dof), gain, margin)


def bpb_to_nats(val_bpb: float, val_tokens: int, val_bytes: int) -> float:
    """val_loss (nats per token) for a val_bpb over a split of val_tokens tokens and val_bytes bytes."""
    # val_bpb = val_loss / ln 2 * tokens / bytes, so the conversion is exact given the split's counts.
    return val_bpb * math.log(2) * val_bytes / val_tokens


def bpb_gain_to_nats(gain_bpb: float, val_tokens: int, val_bytes: int) -> float:
    """A val_bpb gain expressed as a val_loss gain in nats per token (linear, same factor as bpb_to_nats)."""
    return bpb_to_nats(gain_bpb, val_tokens, val_bytes)


@dataclass(frozen=True)
class RecordVerdict:
    """Whether a candidate meets the challenge's record criterion against a baseline."""

    welch: WelchResult
    min_gain_nats: float
    alpha: float

    @property
    def passes(self) -> bool:
        return self.welch.p_value < self.alpha

    def explain(self) -> str:
        """One sentence stating the gain, the test and the outcome."""
        w = self.welch
        verdict = "meets" if self.passes else "does not meet"
        return (f"mean gain {w.mean_gain:.4f} nats; Welch t={w.t:.3f}, dof={w.dof:.1f}, one-sided p={w.p_value:.4g} "
                f"for a gain above {self.min_gain_nats} nats: {verdict} the p < {self.alpha} criterion")


def record_criterion(candidate_val_loss: Sequence[float], baseline_val_loss: Sequence[float],
                     min_gain_nats: float = MIN_GAIN_NATS, alpha: float = ALPHA) -> RecordVerdict:
    """Test per-seed val_loss lists (nats) against the challenge's 0.005-nat, p < 0.01 record bar."""
    return RecordVerdict(welch_one_sided(candidate_val_loss, baseline_val_loss, margin=min_gain_nats),
                         min_gain_nats, alpha)
