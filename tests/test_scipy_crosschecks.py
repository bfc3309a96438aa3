"""Hand-written numerics against scipy: the size model's bounded least squares, the seed statistics (Welch,
Student t, incomplete beta) and the rung fidelity's Spearman and permutation p-value, on random inputs."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from scipy import optimize, special, stats

from search.analysis.fidelity import permutation_p, spearman
from search.rerun.stats import regularized_incomplete_beta, student_t_sf, welch_one_sided
from trainer.sizing.calibration import _solve_bounded


def _boxed_problem(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    m = int(rng.integers(n + 1, 3 * n + 2))
    x, y = rng.normal(size=(m, n)), 2 * rng.normal(size=m)
    return x, y, -rng.uniform(0, 1, n), rng.uniform(0, 1, n)


def _exact_optimum(x, y, lower, upper) -> float:
    """The least squared error over the box, by trying every choice of free / at-lower / at-upper coefficients."""
    best = np.inf
    for states in itertools.product("flu", repeat=x.shape[1]):
        coef = np.array([{"l": lo, "u": hi, "f": 0.0}[s] for s, lo, hi in zip(states, lower, upper)])
        free = [i for i, s in enumerate(states) if s == "f"]
        if free:
            sol, *_ = np.linalg.lstsq(x[:, free], y - x @ coef, rcond=None)
            if np.any(sol < lower[free] - 1e-12) or np.any(sol > upper[free] + 1e-12):
                continue  # this active set's unconstrained optimum leaves the box
            coef[free] = sol
        best = min(best, float(np.sum((x @ coef - y) ** 2)))
    return best


def test_the_calibration_fit_reaches_the_exact_optimum_of_random_boxed_problems():
    rng = np.random.default_rng(7)
    for _ in range(400):  # a greedy pin-and-refit misses the optimum in a few percent of these
        x, y, lower, upper = _boxed_problem(rng, int(rng.integers(1, 6)))
        coef = _solve_bounded(x, y, lower, upper)
        assert np.all(coef >= lower - 1e-12) and np.all(coef <= upper + 1e-12)
        assert float(np.sum((x @ coef - y) ** 2)) == pytest.approx(_exact_optimum(x, y, lower, upper), rel=1e-9,
                                                                  abs=1e-12)


def test_the_calibration_fit_matches_lsq_linear_and_its_optimality_conditions():
    rng = np.random.default_rng(8)
    for _ in range(3000):
        x, y, lower, upper = _boxed_problem(rng, int(rng.integers(1, 10)))
        coef = _solve_bounded(x, y, lower, upper)
        # scipy's other bounded solver (trust region reflective), run to a tight tolerance
        trf = optimize.lsq_linear(x, y, bounds=(lower, upper), method="trf", tol=1e-13).x
        error, trf_error = float(np.sum((x @ coef - y) ** 2)), float(np.sum((x @ trf - y) ** 2))
        assert error <= trf_error * (1 + 1e-8) + 1e-12
        # KKT: zero gradient inside the box; at a bound, the gradient points out of it.
        grad = x.T @ (x @ coef - y)
        scale = 1e-7 * (1 + np.abs(x.T @ y))
        inside = (coef > lower + 1e-9) & (coef < upper - 1e-9)
        assert np.all(np.abs(grad[inside]) <= scale[inside])
        assert np.all(grad[coef <= lower + 1e-9] >= -scale[coef <= lower + 1e-9])
        assert np.all(grad[coef >= upper - 1e-9] <= scale[coef >= upper - 1e-9])


def test_the_calibration_fit_with_no_free_coefficient_is_empty():
    assert _solve_bounded(np.zeros((3, 0)), np.ones(3), np.zeros(0), np.zeros(0)).shape == (0,)


@pytest.mark.parametrize("seed", range(60))
def test_welch_matches_scipy(seed):
    rng = random.Random(seed)
    candidate = [rng.gauss(1.20, rng.uniform(0.001, 0.05)) for _ in range(rng.randint(2, 8))]
    baseline = [rng.gauss(1.21, rng.uniform(0.001, 0.05)) for _ in range(rng.randint(2, 8))]
    margin = rng.choice([0.0, 0.005, 0.02])
    ours = welch_one_sided(candidate, baseline, margin=margin)
    # H1: mean(baseline) - mean(candidate) > margin, i.e. mean(baseline - margin) > mean(candidate)
    theirs = stats.ttest_ind([b - margin for b in baseline], candidate, equal_var=False, alternative="greater")
    assert ours.t == pytest.approx(theirs.statistic, rel=1e-9, abs=1e-12)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-7, abs=1e-13)
    assert ours.dof == pytest.approx(theirs.df, rel=1e-9)


def test_t_tail_and_incomplete_beta_match_scipy():
    rng = np.random.default_rng(3)
    for t, dof in zip(rng.normal(scale=4, size=500), rng.uniform(0.5, 200, size=500)):
        assert student_t_sf(float(t), float(dof)) == pytest.approx(stats.t.sf(t, dof), rel=1e-9, abs=1e-15)
    for a, b, x in zip(rng.uniform(0.05, 50, 500), rng.uniform(0.05, 50, 500), rng.uniform(0, 1, 500)):
        assert regularized_incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("seed", range(40))
def test_spearman_matches_scipy(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 30)
    x = [rng.choice([rng.random(), round(rng.random(), 1)]) for _ in range(n)]  # some ties
    y = [rng.choice([rng.random(), round(rng.random(), 1)]) for _ in range(n)]
    ours, theirs = spearman(x, y), stats.spearmanr(x, y).statistic
    assert (ours is None) if np.isnan(theirs) else ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_exact_permutation_p_matches_scipy(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 6)
    x = [rng.random() for _ in range(n)]
    y = [xi + rng.gauss(0, 0.3) for xi in x]
    # One sample, "pairings": every one of the n! orders of y against the fixed x.
    theirs = stats.permutation_test((y,), lambda b: stats.spearmanr(x, b).statistic, vectorized=False,
                                    permutation_type="pairings", alternative="greater", n_resamples=np.inf)
    assert permutation_p(x, y) == pytest.approx(theirs.pvalue, rel=1e-12)
