"""Student-t tail against table values and closed forms; Welch's test against its definition and by simulation."""
from __future__ import annotations

import math
import random
import statistics

import pytest

from search.rerun.stats import (
    bpb_gain_to_nats,
    bpb_to_nats,
    record_criterion,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_sf,
    summarize,
    welch_one_sided,
)


@pytest.mark.parametrize("t, dof, p", [
    (2.0, 5, 0.0510),     # textbook one-sided tail
    (3.365, 5, 0.0100),   # t table, 0.01 column
    (2.015, 5, 0.0500),   # t table, 0.05 column
    (1.476, 5, 0.1000),
    (6.965, 2, 0.0100),
    (2.764, 10, 0.0100),
    (2.457, 30, 0.0100),
])
def test_t_tail_matches_table_values(t, dof, p):
    assert student_t_sf(t, dof) == pytest.approx(p, abs=6e-5)


@pytest.mark.parametrize("t", [-3.0, -0.4, 0.0, 0.3, 1.0, 5.0, 40.0])
def test_t_tail_matches_closed_forms_for_1_and_2_dof(t):
    assert student_t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-12, abs=1e-15)
    assert student_t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("t", [0.5, 1.645, 1.96, 3.0])
def test_t_tail_tends_to_the_normal_tail(t):
    normal = 0.5 * math.erfc(t / math.sqrt(2))
    # The gap shrinks like 1/dof (about 3e-5 relative at t=3, dof=1e6).
    assert student_t_sf(t, 1e6) == pytest.approx(normal, rel=5e-5)
    assert student_t_sf(t, 30) > student_t_sf(t, 300) > normal  # heavier tails with fewer dof


def test_t_cdf_is_symmetric():
    for dof in (1.5, 4.0, 17.3):
        for t in (0.2, 1.1, 2.5):
            assert student_t_cdf(-t, dof) == pytest.approx(1 - student_t_cdf(t, dof), abs=1e-14)
            assert student_t_sf(t, dof) == pytest.approx(student_t_cdf(-t, dof), abs=1e-14)


def test_incomplete_beta_special_cases():
    # I_x(1, 1) = x, I_x(a, 1) = x^a, I_x(1, b) = 1 - (1-x)^b.
    for x in (0.01, 0.3, 0.5, 0.9, 0.999):
        assert regularized_incomplete_beta(1, 1, x) == pytest.approx(x, rel=1e-12)
        assert regularized_incomplete_beta(3.5, 1, x) == pytest.approx(x**3.5, rel=1e-10)
        assert regularized_incomplete_beta(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, rel=1e-10)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        regularized_incomplete_beta(1, 1, 1.5)


def test_summary_uses_sample_std():
    values = [1.20, 1.22, 1.25]
    s = summarize(values)
    mean = sum(values) / 3
    assert s.mean == pytest.approx(mean)
    assert s.std == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2))
    assert (s.n, s.min, s.max) == (3, 1.20, 1.25)
    assert summarize([1.5]).std == 0.0
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_welch_statistic_follows_its_definition():
    cand, base = [1.10, 1.12, 1.09, 1.11], [1.15, 1.19, 1.17]
    r = welch_one_sided(cand, base)
    vc, vb = statistics.variance(cand) / 4, statistics.variance(base) / 3
    assert r.mean_gain == pytest.approx(statistics.fmean(base) - statistics.fmean(cand))
    assert r.t == pytest.approx(r.mean_gain / math.sqrt(vc + vb))
    assert r.dof == pytest.approx((vc + vb) ** 2 / (vc**2 / 3 + vb**2 / 2))
    assert r.p_value == pytest.approx(student_t_sf(r.t, r.dof))
    assert r.p_value < 0.05


def test_equal_sizes_and_variances_reduce_to_students_t():
    cand = [0.0, 1.0, 2.0]
    base = [x + 3.0 for x in cand]  # same spread, shifted
    r = welch_one_sided(cand, base)
    assert r.dof == pytest.approx(4.0)  # n1 + n2 - 2
    assert r.t == pytest.approx(3.0 / math.sqrt(2 * 1.0 / 3))


def test_direction_and_margin():
    better, worse = [1.00, 1.01, 1.02], [1.05, 1.06, 1.08]
    forward, backward = welch_one_sided(better, worse), welch_one_sided(worse, better)
    assert forward.p_value < 0.5 < backward.p_value
    assert forward.p_value + backward.p_value == pytest.approx(1.0)
    # A margin is the same as shifting the candidate up by it.
    shifted = welch_one_sided([x + 0.01 for x in better], worse)
    with_margin = welch_one_sided(better, worse, margin=0.01)
    assert with_margin.t == pytest.approx(shifted.t) and with_margin.p_value == pytest.approx(shifted.p_value)
    assert with_margin.p_value > forward.p_value


def test_p_values_are_calibrated_under_the_null():
    rng = random.Random(1234)
    trials, hits = 3000, 0
    for _ in range(trials):
        cand = [rng.gauss(1.2, 0.01) for _ in range(3)]
        base = [rng.gauss(1.2, 0.03) for _ in range(4)]
        hits += welch_one_sided(cand, base).p_value < 0.1
    # Welch's test is close to exact for normal data: about 10% false positives at alpha 0.1.
    assert 0.08 < hits / trials < 0.12


def test_needs_two_seeds_per_side_and_handles_zero_variance():
    with pytest.raises(ValueError, match="run more seeds"):
        welch_one_sided([1.0], [1.1, 1.2])
    assert welch_one_sided([1.0, 1.0], [1.1, 1.1]).p_value == 0.0
    assert welch_one_sided([1.2, 1.2], [1.1, 1.1]).p_value == 1.0


def test_bpb_to_nats_inverts_the_bpb_definition():
    tokens, nbytes, loss = 2_575_882, 5_781_497, 2.9
    bpb = loss / math.log(2) * tokens / nbytes
    assert bpb_to_nats(bpb, tokens, nbytes) == pytest.approx(loss)
    assert bpb_gain_to_nats(0.01, tokens, nbytes) == pytest.approx(bpb_to_nats(1.01, tokens, nbytes) - bpb_to_nats(1.0, tokens, nbytes))


def test_record_criterion_requires_the_gain_beyond_0005_nats():
    base = [2.9000, 2.9005, 2.8995]
    clear_win = [2.8800, 2.8810, 2.8790]    # 0.020 nats better
    small_win = [2.8970, 2.8975, 2.8965]    # tight seeds: surely better, but only by 0.003 nats
    assert record_criterion(clear_win, base).passes
    verdict = record_criterion(small_win, base)
    assert welch_one_sided(small_win, base).p_value < 0.01  # better, yet...
    assert not verdict.passes                                # ...not by the required 0.005 nats
    assert "does not meet" in verdict.explain() and "0.005" in verdict.explain()
