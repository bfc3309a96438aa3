"""Rung fidelity's permutation p-value, and fidelity pooled over several searches (`python -m search fidelity`)."""
from __future__ import annotations

import dataclasses
import itertools
import random

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from search import store
from search.cli import main
from search.analysis.fidelity import permutation_p
from search.analysis.pooled import pooled_fidelity
from search.settings import SettingsError
from tests.search_fixtures import tiny_settings, write_space


def test_permutation_p_is_the_share_of_pairings_that_agree_at_least_as_well():
    assert permutation_p([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1 / 24)  # only the identity
    assert permutation_p([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(1.0)
    # rho 0.8 (sum of squared rank differences 4); a pairing agrees at least as well when its sum is <= 4: the
    # identity (0), one swap of neighbours (2; 4 of them) or two disjoint ones (4; 3 of them): 8 of 120.
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    hits = sum(sum((a - b) ** 2 for a, b in zip(x, p)) <= 4 for p in itertools.permutations(y))
    assert hits == 8 and permutation_p(x, y) == pytest.approx(8 / 120)
    assert permutation_p([1, 1, 1], [1, 2, 3]) is None  # undefined rho: no p either


def test_sampled_permutation_p_matches_the_exact_one():
    rng = random.Random(3)
    for _ in range(3):
        x, y = [rng.random() for _ in range(7)], [rng.random() for _ in range(7)]
        exact = permutation_p(x, y)
        sampled = permutation_p(x, y, draws=20_000, seed=1, exact_max_n=0)
        assert sampled == pytest.approx(exact, abs=0.015)
        assert permutation_p(x, y, draws=2_000, seed=1, exact_max_n=0) == permutation_p(
            x, y, draws=2_000, seed=1, exact_max_n=0)  # seeded: the report does not change between runs


def _study(rung_and_final: dict[int, tuple[float, float]], *rung_ms: int, run_config: dict | None = None,
           device: str | None = None) -> optuna.Study:
    """Completed trials reporting one value at each rung (ms of training), and one pruned trial."""
    study = optuna.create_study()
    extra = {} if run_config is None else {"run_config": run_config}
    extra.update({} if device is None else {"device": device})
    for number, (rung, final) in sorted(rung_and_final.items()):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=final, intermediate_values={ms: rung for ms in rung_ms},
            user_attrs={"val_bpb": final, "val_bpb_prequant": final - 0.01, **extra}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, intermediate_values={ms: 9.0 for ms in rung_ms}))
    return study


@pytest.fixture()
def two_searches(tmp_path, tiny_corpus):
    space = write_space(tmp_path)
    # Both budgets 1.5 s; the first has rungs at 0.5 s and 1 s, the second one rung at 1 s.
    a = tiny_settings(tmp_path / "runs", tiny_corpus, space, "a")
    b = tiny_settings(tmp_path / "runs", tiny_corpus, space, "b", grace_s=1.0)
    # Within each search the rung ranks its three trials perfectly, but b's trials are all better at the
    # end and worse at the rung: pooled, the rung misranks across searches.
    study_a = _study({0: (2.0, 1.20), 1: (2.1, 1.30), 2: (2.2, 1.40)}, 500, 1000)
    study_b = _study({0: (2.5, 1.00), 1: (2.6, 1.05), 2: (2.7, 1.10)}, 1000)
    return [(a, study_a), (b, study_b)]


def test_pooled_fidelity_ranks_every_search_s_trials_together(two_searches):
    df = pooled_fidelity(two_searches)
    at_1s = df[df["rung_s"] == 1.0].set_index("search")
    assert list(at_1s.index) == ["a", "b", "pooled"]
    assert list(at_1s["n"]) == [3, 3, 6]  # trial numbers repeat across searches; each counts once
    assert at_1s.loc["a", "spearman"] == at_1s.loc["b", "spearman"] == "+1.000"
    # Pooled rung ranks 1..6 against final ranks 4 5 6 1 2 3: squared differences 6 x 9 = 54, rho = 1 - 6 x 54 / 210.
    want = 1 - 6 * 54 / (6 * 35)
    assert float(at_1s.loc["pooled", "spearman"]) == pytest.approx(want, abs=5e-4) and want == pytest.approx(-19 / 35)
    assert at_1s.loc["a", "p_positive"] == f"{1 / 6:.3f}"
    assert set(df[df["rung_s"] == 0.5]["search"]) == {"a", "pooled"}  # only a has a 0.5 s rung


def test_pooling_searches_of_different_budgets_is_refused(two_searches, tmp_path, tiny_corpus):
    (a, study_a), _ = two_searches
    longer = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "c", budget_s=3.0)
    with pytest.raises(SettingsError, match="--budget-s"):
        pooled_fidelity([(a, study_a), (longer, _study({0: (2.0, 1.0)}, 1000))])
    with pytest.raises(SettingsError, match="named twice"):
        pooled_fidelity([(a, study_a), (a, study_a)])
    b = two_searches[1][0]
    cooled = _study({0: (2.5, 1.0), 1: (2.6, 1.1), 2: (2.7, 1.2)}, 1000,
                    run_config={"train": {"rung_cooldown_fraction": 0.1}})  # b's rungs cooled down, a's did not
    with pytest.raises(SettingsError, match="rung_cooldown_fraction"):
        pooled_fidelity([(a, study_a), (b, cooled)])


def test_pooling_searches_trained_on_different_devices_is_refused(two_searches):
    (a, _), (b, _) = two_searches
    on_h100 = _study({0: (2.0, 1.20), 1: (2.1, 1.30)}, 1000, device="NVIDIA H100 80GB HBM3")
    on_h200 = _study({0: (2.5, 1.00), 1: (2.6, 1.05)}, 1000, device="NVIDIA H200")
    with pytest.raises(SettingsError, match="different kinds of device") as refused:
        pooled_fidelity([(a, on_h100), (b, on_h200)])
    assert "'a': ['NVIDIA H100 80GB HBM3']" in str(refused.value) and "'b': ['NVIDIA H200']" in str(refused.value)
    # One kind of device pools; a study from before the device was recorded names none, so it pools with any.
    also_h100 = _study({0: (2.5, 1.00), 1: (2.6, 1.05)}, 1000, device="NVIDIA H100 80GB HBM3")
    unrecorded = _study({0: (2.5, 1.00), 1: (2.6, 1.05)}, 1000)
    for other in (also_h100, unrecorded):
        assert "pooled" in set(pooled_fidelity([(a, on_h100), (b, other)])["search"])


def test_fidelity_cli_writes_csv_and_markdown(two_searches, capsys):
    for settings, study in two_searches:  # store each as a search on disk, as `search run` would
        store.save_settings(settings)
        saved = optuna.create_study(study_name=settings.name, storage=store.study_url(settings))
        saved.add_trials(study.get_trials())
    a = two_searches[0][0]
    assert main(["fidelity", "a", "b", "--storage", a.storage]) == 0
    out = capsys.readouterr().out
    assert "pooled" in out and "p_positive" in out
    report = store.report_dir(a)
    table = pd.read_csv(report / "fidelity_pooled.csv")
    assert list(table[table["search"] == "pooled"]["n"]) == [3, 6]
    md = (report / "fidelity_pooled.md").read_text()
    assert "`a`, `b`" in md and "| pooled |" in md and "budget 1.5 s" in md
    assert main(["fidelity", "a", "missing", "--storage", a.storage]) == 2  # unknown name: one line, exit 2
    assert "missing" in capsys.readouterr().err


def test_fidelity_of_the_scores_before_each_rung_s_cooldown():
    from search.analysis.fidelity import score_milestones

    finals = {1: 1.1, 2: 1.2, 3: 1.3, 4: 1.4}
    cooled = {60.0: {1: 1.50, 2: 1.60, 3: 1.70, 4: 1.80}}  # ranks as the finals do
    before = {60.0: {1: 1.90, 2: 1.80, 3: 1.70, 4: 1.60}}  # ranks the other way round
    (row,) = score_milestones(cooled, finals, (60.0,), at_before_cooldown=before)
    assert row.spearman == pytest.approx(1.0) and row.spearman_before_cooldown == pytest.approx(-1.0)
    (partial,) = score_milestones(cooled, finals, (60.0,), at_before_cooldown={60.0: {1: 1.9, 2: 1.8}})
    assert partial.spearman_before_cooldown is None  # not every trial has one: no figure over other trials
    (plain,) = score_milestones(cooled, finals, (60.0,))
    assert plain.spearman_before_cooldown is None


def test_a_search_with_rung_cooldowns_records_the_score_before_each_cooldown(tmp_path, tiny_corpus):
    from search.analysis.report import load_study
    from search.vocabulary import RUNGS, RUNGS_BEFORE_COOLDOWN
    from tests.search_fixtures import run_local_search

    settings = run_local_search(tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "cool",
                                              trials=4, overrides=("train.rung_cooldown_fraction=0.2",)))
    trials = load_study(settings).get_trials(deepcopy=False)
    with_rungs = [t for t in trials if t.user_attrs.get(RUNGS)]
    assert with_rungs
    for t in with_rungs:  # one score before the cooldown per rung, at the rung's time, through Tune
        before = t.user_attrs[RUNGS_BEFORE_COOLDOWN]
        assert [s for s, _ in before] == [s for s, _ in t.user_attrs[RUNGS]]
        assert [v for _, v in before] != [v for _, v in t.user_attrs[RUNGS]]


def test_the_report_ranks_the_scores_before_cooldown_only_where_there_are_some(tmp_path, tiny_corpus):
    from search.analysis.report import fidelity_frame, study_fidelity
    from search.vocabulary import RUNGS, RUNGS_BEFORE_COOLDOWN

    settings = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "cooled")  # rungs 0.5, 1 s
    study = optuna.create_study()
    for number, final in enumerate((1.1, 1.2, 1.3)):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=final,
            user_attrs={"val_bpb": final, RUNGS: [[0.5, 2.0 + number]],
                        RUNGS_BEFORE_COOLDOWN: [[0.5, 3.0 - number]]}))
    (row,) = study_fidelity(study, settings)
    assert row.spearman == pytest.approx(1.0) and row.spearman_before_cooldown == pytest.approx(-1.0)
    assert list(fidelity_frame([row]).columns)[-1] == "spearman_before_cooldown"
    plain = dataclasses.replace(row, spearman_before_cooldown=None)
    assert "spearman_before_cooldown" not in fidelity_frame([plain]).columns


def test_pooled_rows_rank_the_scores_before_cooldown_too(two_searches):
    from search.vocabulary import RUNGS, RUNGS_BEFORE_COOLDOWN

    def cooled(finals: list[float]) -> optuna.Study:
        """Trials whose cooled-down rung ranks as the finals do and whose score before it the other way."""
        study = optuna.create_study()
        for k, final in enumerate(finals):
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.COMPLETE, value=final,
                user_attrs={"val_bpb": final, "run_config": {"train": {"rung_cooldown_fraction": 0.1}},
                            RUNGS: [[1.0, 2.0 + final]], RUNGS_BEFORE_COOLDOWN: [[1.0, 9.0 - final]]}))
        return study

    (a, _), (b, _) = two_searches
    df = pooled_fidelity([(a, cooled([1.1, 1.2])), (b, cooled([1.3, 1.4]))])
    pooled = df[(df["search"] == "pooled") & (df["rung_s"] == 1.0)].iloc[0]
    assert pooled["n"] == 4 and pooled["spearman"] == "+1.000" and pooled["spearman_before_cooldown"] == "-1.000"
