"""The report's extras: `rerun` on the CLI, the per-trial time breakdown, and rung fidelity (Spearman)."""
from __future__ import annotations

import json
import math
import shutil
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import optuna
from optuna.trial import TrialState

from search.cli import build_parser, main
from search.analysis.fidelity import (
    ALL_TIED, TOO_FEW, RungFidelity, average_ranks, cut_cost, milestone, rung_fidelity, score_milestones, spearman,
)
from search.analysis.overhead import breakdown, totals
from search.analysis.report import load_study, trials_table
from search.rerun.cli import run_rerun_command
from tests.search_fixtures import cli_env, run_local_search, tiny_settings, write_space

REPO = Path(__file__).resolve().parent.parent


# ---- Spearman -------------------------------------------------------------------------------------
def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert average_ranks([3.0, 1.0, 2.0]) == [3, 1, 2]
    assert average_ranks([7, 7, 7]) == [2, 2, 2]
    assert average_ranks([]) == []


def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    # Ties: y ranks [1, 2, 3.5, 5, 3.5]; Pearson on ranks = 8 / sqrt(10 * 9.5).
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3], [10, 200, 3000]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
    with pytest.raises(ValueError, match="one pair per trial"):
        spearman([1, 2], [1])


def _brute_spearman(x, y):
    """Ranks by counting (less + (equal + 1) / 2), then the stdlib's Pearson."""
    def ranks(v):
        return [sum(w < a for w in v) + (sum(w == a for w in v) + 1) / 2 for a in v]
    rx, ry = ranks(x), ranks(y)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return None
    return statistics.correlation(rx, ry)


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_brute_force(seed):
    rng = random.Random(seed)
    for _ in range(40):
        n = rng.randint(2, 9)
        x, y = [rng.randint(0, 4) for _ in range(n)], [rng.random() if rng.random() < 0.5 else rng.randint(0, 3)
                                                      for _ in range(n)]
        want = _brute_spearman(x, y)
        assert (spearman(x, y) is None) if want is None else spearman(x, y) == pytest.approx(want)
        if len(set(x)) == n and len(set(y)) == n:  # no ties: the classic 1 - 6 sum d^2 / (n (n^2 - 1))
            d2 = sum((a - b) ** 2 for a, b in zip(average_ranks(x), average_ranks(y)))
            assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)))


# ---- rungs and fidelity ------------------------------------------------------------------------------
def test_milestones_of_periodic_and_asha_reports():
    # Periodic only (searches before report_at_s reported every rung_s).
    assert milestone(0.502, 0.5) == 0.5 and milestone(1.006, 0.5) == 1.0 and milestone(0.6, 0.2) == 0.6
    assert milestone(66.9, 66.666667) == 66.666667
    # ASHA's rungs only (the default now), exact floats as Ray computes them.
    asha = (600 / 9, 200.0)
    assert milestone(66.7, 0.0, asha) == 66.666667 and milestone(150.0, 0.0, asha) == 66.666667
    assert milestone(200.01, 0.0, asha) == 200.0 and milestone(10.0, 0.0, asha) is None
    # Both: the last scheduled time reached.
    assert [milestone(t, 25.0, (20.0, 60.0)) for t in (20.1, 25.3, 50.2, 60.1, 75.0)] == [20, 25, 50, 60, 75]
    with pytest.raises(ValueError, match="report_every_s"):
        milestone(1.0, 0.0)


def test_rung_fidelity_counts_only_trials_with_a_final():
    rungs = {
        1: [(0.50, 2.0), (1.01, 1.6)], 2: [(0.51, 2.2), (1.00, 1.5)], 3: [(0.50, 2.1), (1.02, 1.7)],
        4: [(0.53, 1.9), (1.00, 1.4)], 5: [(0.50, 1.0)],  # 5 was pruned: no final, must not count
        6: [(0.50, 3.0), (1.50, 2.5)],  # only this one reached 1.5 s
    }
    finals = {1: 1.30, 2: 1.20, 3: 1.40, 4: 1.10, 6: 2.0}
    rows = rung_fidelity(rungs, finals, 0.5, asha=[0.5, 1.5])
    assert [r.rung_s for r in rows] == [0.5, 1.0, 1.5] and [r.asha for r in rows] == [True, False, True]
    first, second, third = rows
    assert first.n == 5 and first.spearman == pytest.approx(spearman([2.0, 2.2, 2.1, 1.9, 3.0],
                                                                     [1.30, 1.20, 1.40, 1.10, 2.0]))
    assert second.n == 4 and second.spearman == pytest.approx(1.0) and second.note == ""
    assert third == RungFidelity(1.5, 1, None, True, TOO_FEW)
    tied = rung_fidelity({1: [(0.5, 1.0)], 2: [(0.5, 1.0)], 3: [(0.5, 1.0)]}, {1: 1, 2: 2, 3: 3}, 0.5)
    assert tied[0].spearman is None and tied[0].note == ALL_TIED


def test_rung_fidelity_with_reports_at_asha_rungs_only_and_with_periodic_ones_between():
    finals = {1: 1.3, 2: 1.2, 3: 1.4}
    only_asha = {n: [(20.01, 2 + v), (60.02, 1 + v)] for n, v in finals.items()}
    rows = rung_fidelity(only_asha, finals, 0.0, asha=(20.0, 60.0))
    assert [(r.rung_s, r.n, r.asha) for r in rows] == [(20, 3, True), (60, 3, True)]
    assert all(r.spearman == pytest.approx(1.0) for r in rows)
    # Periodic reports every 25 s between the rungs: each report keeps its own milestone (25 s is no ASHA rung).
    mixed = {n: [(20.01, 2 + v), (25.01, 5 - v), (60.02, 1 + v)] for n, v in finals.items()}
    rows = rung_fidelity(mixed, finals, 25.0, asha=(20.0, 60.0))
    assert [(r.rung_s, r.asha) for r in rows] == [(20, True), (25, False), (60, True)]
    assert [r.spearman for r in rows] == pytest.approx([1.0, -1.0, 1.0])


def test_prequant_fidelity_separates_what_the_export_reorders():
    # Rungs rank 1 < 2 < 3 < 4, as do the pre-quantization finals; trial 1's coarse quantization makes its
    # final (round-trip) val_bpb the worst, so only the post-quantization correlation drops.
    rungs = {n: [(0.5, 2.0 + n / 10)] for n in (1, 2, 3, 4)}
    prequant = {1: 1.10, 2: 1.20, 3: 1.30, 4: 1.40}
    finals = {1: 1.50, 2: 1.21, 3: 1.31, 4: 1.41}
    (row,) = rung_fidelity(rungs, finals, 0.5, finals_prequant=prequant)
    assert row.spearman_prequant == pytest.approx(1.0)
    assert row.spearman == pytest.approx(spearman([2.1, 2.2, 2.3, 2.4], [1.50, 1.21, 1.31, 1.41])) == pytest.approx(-0.2)
    (partial,) = rung_fidelity(rungs, finals, 0.5, finals_prequant={1: 1.1, 2: 1.2, 3: 1.3})
    assert partial.spearman_prequant is None and partial.spearman == row.spearman  # one pre-quant value missing


def test_cut_cost_hand_computed():
    finals = [1.30, 1.10, 1.20, 1.40, 1.25, 1.35]
    # The winner (final 1.10) is 4th at the rung; a cut keeping ceil(6/3) = 2 keeps the trials with finals 1.20
    # and 1.40, so it loses 0.10 of val_bpb.
    assert cut_cost([2.0, 2.3, 1.9, 1.8, 2.4, 2.5], finals, 1 / 3) == (4, pytest.approx(0.10))
    # Kept at the rung: no regret whatever the rest's order.
    assert cut_cost([2.0, 1.7, 1.9, 1.8, 2.4, 2.5], finals, 1 / 3) == (1, 0.0)
    # Half kept (ceil(3 / 2) = 2); a tie with the winner takes the best rank.
    assert cut_cost([1.0, 1.0, 0.5], [1.3, 1.1, 1.2], 0.5) == (2, pytest.approx(0.0))
    assert cut_cost([3.0, 2.0, 1.0], [1.1, 1.2, 1.3], 0.5) == (3, pytest.approx(0.1))
    assert cut_cost([5.0], [1.0], 1 / 3) == (1, 0.0)  # one trial: always kept
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="keep_fraction"):
            cut_cost([1.0, 2.0], [1.0, 2.0], bad)
    with pytest.raises(ValueError, match="one pair per trial"):
        cut_cost([1.0, 2.0], [1.0], 0.5)


def test_score_milestones_reports_the_cut_cost_only_with_a_keep_share():
    at = {60.0: {1: 2.0, 2: 2.3, 3: 1.9, 4: 1.8, 5: 2.4, 6: 2.5}, 120.0: {1: 1.5, 2: 1.4}}
    finals = {1: 1.30, 2: 1.10, 3: 1.20, 4: 1.40, 5: 1.25, 6: 1.35}
    first, second = score_milestones(at, finals, asha=(60.0,), keep_fraction=1 / 3)
    assert (first.best_final_rank, first.regret_kept) == (4, pytest.approx(0.10))
    assert second.n == 2 and second.best_final_rank is None and second.regret_kept is None  # too few to rank
    (plain, _) = score_milestones(at, finals, asha=(60.0,))
    assert plain.best_final_rank is None and plain.regret_kept is None
    assert plain.spearman == first.spearman


# ---- time breakdown --------------------------------------------------------------------------------
def test_breakdown_of_complete_pruned_and_rejected_trials():
    done = breakdown(1.5, 0.1, 0.2, 0.05, trainer_wall_s=2.5, tune_wall_s=3.0)
    assert done["wall_s"] == 3.0 and done["other_s"] == pytest.approx(1.15)
    assert done["overhead_pct"] == pytest.approx(50.0)
    pruned = breakdown(0.5, tune_wall_s=4.0)  # compile and rung evals are unknown: they land in other_s
    assert pruned["other_s"] == pytest.approx(3.5) and pruned["overhead_pct"] == pytest.approx(87.5)
    assert pruned["compile_s"] is None
    rejected = breakdown(None)
    assert rejected["wall_s"] is None and rejected["overhead_pct"] is None
    clocks = breakdown(2.0, 0.0, 0.5, 0.0, trainer_wall_s=2.4)  # two clocks disagree: no negative remainder
    assert clocks["wall_s"] == 2.5 and clocks["other_s"] == 0.0
    t = totals([done, pruned, rejected])
    assert t["trials"] == 2 and t["wall_s"] == 7.0 and t["train_s"] == 2.0
    assert t["other_s"] == pytest.approx(4.65) and t["overhead_pct"] == pytest.approx(100 * 5 / 7)
    assert totals([rejected])["overhead_pct"] is None


def test_startup_is_a_known_part_and_old_trials_without_it_still_add_up():
    new = breakdown(1.5, 0.1, 0.2, 0.05, tune_wall_s=3.0, startup_s=0.4)
    assert new["startup_s"] == 0.4 and new["other_s"] == pytest.approx(0.75)  # only Ray and checkpoints remain
    old = breakdown(1.5, 0.1, 0.2, 0.05, tune_wall_s=3.0)  # recorded before the trainer measured start-up
    assert old["startup_s"] is None and old["other_s"] == pytest.approx(1.15)
    assert new["overhead_pct"] == old["overhead_pct"] == pytest.approx(50.0)
    t = totals([new, old])
    assert t["startup_s"] == pytest.approx(0.4) and t["other_s"] == pytest.approx(1.9) and t["wall_s"] == 6.0


# ---- one tiny real search -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def search(tmp_path_factory, tiny_corpus):
    """A 5-trial local CPU search (ASHA rungs at 0.5 s and 1 s), shared by the tests below."""
    root = tmp_path_factory.mktemp("report_extras")
    settings = tiny_settings(root / "runs", tiny_corpus, write_space(root), "extras", trials=5)
    return run_local_search(settings)


def test_finished_trials_record_their_time_parts(search):
    trials = load_study(search).get_trials(deepcopy=False)
    complete = [t for t in trials if t.user_attrs.get("status") == "complete"]
    assert complete
    for t in complete:  # carried from trainer.train's metrics through Tune into the study
        for key in ("final_train_s", "startup_s", "compile_s", "eval_s", "export_s", "wall_s", "device_s"):
            assert t.user_attrs[key] >= 0, key
        assert t.user_attrs["eval_s"] > 0 and t.user_attrs["wall_s"] > t.user_attrs["final_train_s"]
    df = trials_table(load_study(search))
    launched = df[df["tune_trial_id"].astype(str) != ""]
    assert launched["wall_s"].notna().all() and df.loc[df["tune_trial_id"].astype(str) == "", "wall_s"].isna().all()
    for r in launched.itertuples():
        parts = sum(v for v in (r.train_s, r.startup_s, r.compile_s, r.wait_s, r.eval_s, r.export_s, r.other_s)
                    if v == v and v is not None)
        assert parts == pytest.approx(r.wall_s) and 0 < r.overhead_pct < 100
        assert r.wall_s >= r.device_s - 1e-9
        if r.status == "pruned":
            last = next(t for t in trials if t.number == r.number).user_attrs["rungs"][-1][0]
            # the stopping rung carried the time before training; its rung evaluations stay in other_s
            assert r.train_s == pytest.approx(last) and r.compile_s >= 0 and r.wait_s < 0.1 and math.isnan(r.eval_s)
        if r.status == "complete":
            assert r.train_s == pytest.approx(r.final_train_s) and r.startup_s > 0


def test_report_cli_shows_time_and_fidelity(search, capsys):
    assert main(["report", search.name, "--storage", search.storage]) == 0
    out = capsys.readouterr().out
    folder = Path(search.storage, search.name, "report")
    info = json.loads((folder / "summary.json").read_text())
    assert "fidelity (Spearman" in out and "rung_s" in out and "non-training share" in out

    df = trials_table(load_study(search))
    assert info["time"]["wall_s"] == pytest.approx(df["wall_s"].sum())
    assert info["time"]["train_s"] == pytest.approx(df["train_s"].sum())
    assert info["time"]["overhead_pct"] == pytest.approx(100 * (1 - df["train_s"].sum() / df["wall_s"].sum()))

    # Fidelity against a brute force over the study's intermediate values (step = training ms).
    trials = load_study(search).get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [f["rung_s"] for f in info["fidelity"]] == [0.5, 1.0]
    for f in info["fidelity"]:
        pairs = [(v, t.value) for t in done for ms, v in t.intermediate_values.items()
                 if math.floor(ms / 1000 / search.rung_s + 1e-9) * search.rung_s == pytest.approx(f["rung_s"])]
        assert f["n"] == len(pairs) and f["asha"]
        if len(pairs) >= 3:
            assert f["spearman"] == pytest.approx(_brute_spearman(*zip(*pairs)))
            pre = [(v, t.user_attrs["val_bpb_prequant"]) for t in done for ms, v in t.intermediate_values.items()
                   if math.floor(ms / 1000 / search.rung_s + 1e-9) * search.rung_s == pytest.approx(f["rung_s"])]
            assert f["spearman_prequant"] == pytest.approx(_brute_spearman(*zip(*pre)))
        else:
            assert f["spearman"] is None and f["note"] == TOO_FEW and TOO_FEW in out
    assert info["time"]["startup_s"] == pytest.approx(df["startup_s"].sum()) and ", startup " in out
    md = (folder / "report.md").read_text()
    assert "## Trial time (seconds)" in md and "## Rung fidelity" in md and "non-training share" in md
    assert "| number | status | worker_trial | wall_s | train_s | startup_s | compile_s |" in md


def test_rerun_is_a_search_command():
    args = build_parser().parse_args(["rerun", "s1", "--trial", "3", "--no-baseline"])
    assert args.func is run_rerun_command and args.trial == "3" and args.no_baseline
    out = subprocess.run([sys.executable, "-m", "search", "rerun", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=cli_env())
    assert out.returncode == 0 and "--baseline-config" in out.stdout and "--best" in out.stdout, out.stderr


def test_study_fidelity_reads_finals_and_prequant_finals_from_the_study(tmp_path, tiny_corpus):
    from search.analysis.report import study_fidelity

    settings = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "fid")  # rung_s 0.5
    study = optuna.create_study()
    finals = {0: (1.50, 1.10), 1: (1.21, 1.20), 2: (1.31, 1.30), 3: (1.41, 1.40)}  # (val_bpb, prequant)
    for number, (final, pre) in finals.items():
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=final, intermediate_values={500: 2.1 + number / 10},
            user_attrs={"val_bpb": final, "val_bpb_prequant": pre}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, intermediate_values={500: 1.0}))
    (row,) = study_fidelity(study, settings)
    assert row.rung_s == 0.5 and row.n == 4 and row.asha  # the pruned trial has no final: not counted
    assert row.spearman_prequant == pytest.approx(1.0) and row.spearman == pytest.approx(-0.2)


def test_study_fidelity_of_a_search_from_before_report_at_s(tmp_path, tiny_corpus):
    from search.analysis.report import study_fidelity
    from search.settings import SearchSettings

    settings = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "old", budget_s=4.5,
                             reduction_factor=3.0)  # ASHA rungs at 0.5 s and 1.5 s
    old_json = json.loads(settings.to_json())
    del old_json["report_every_s"]  # its trainers reported every rung_s: 0.5, 1.0, 1.5, 2.0, ...
    old = SearchSettings.from_json(json.dumps(old_json))
    study = optuna.create_study()
    for number, final in enumerate((1.5, 1.2, 1.3)):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=final, user_attrs={"val_bpb": final},
            intermediate_values={ms: final + 1000 / ms for ms in (502, 1004, 1503, 2001)}))
    rows = study_fidelity(study, old)
    assert [(r.rung_s, r.asha, r.n) for r in rows] == [(0.5, True, 3), (1.0, False, 3), (1.5, True, 3), (2.0, False, 3)]


def test_a_copied_search_folder_is_read_where_it_now_is(search, tmp_path, capsys):
    assert main(["report", search.name, "--storage", search.storage]) == 0
    original = json.loads((Path(search.storage, search.name, "report", "summary.json")).read_text())
    moved = tmp_path / "fetched"
    shutil.copytree(Path(search.storage, search.name), moved / search.name)
    shutil.rmtree(moved / search.name / "report")
    assert main(["report", search.name, "--storage", str(moved)]) == 0
    info = json.loads((moved / search.name / "report" / "summary.json").read_text())
    assert info["counts"] == original["counts"] and info["best"] == original["best"]


def test_report_says_whether_rungs_were_scored_after_the_round_trip():
    from search.analysis.report import RUNG_NOTES, rungs_after_roundtrip

    def study_with(*flags):
        study = optuna.create_study()
        for flag in flags:
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.COMPLETE, value=1.0, user_attrs={"run_config": {"train": {"rung_roundtrip": flag}}}))
        return study

    assert rungs_after_roundtrip(study_with(True, True)) is True
    assert rungs_after_roundtrip(study_with(False)) is False
    assert rungs_after_roundtrip(study_with(True, False)) is None
    assert rungs_after_roundtrip(study_with()) is False  # nothing ran: the default
    assert "after the quantization round trip" in RUNG_NOTES[True] and "before" in RUNG_NOTES[False]
