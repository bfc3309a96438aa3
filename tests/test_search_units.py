"""Fast tests of the search's pure parts: Pareto frontier, settings, store errors, config preparation."""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
from dataclasses import replace

import pandas as pd
import pytest

from search import store
from search.analysis.pareto import dominates, pareto_front
from search.analysis.report import frontier_table, markdown_table
from search.tune.rungs import RungPlan
from search.tune.searcher import excess_bytes_constraint, prepare_config, summarize
from search.settings import SearchSettings, SettingsError
from trainer.run_config import RunConfig, from_dict


def _dominates_by_hand(a, b):
    """Two objectives, both minimized: a is no worse in either and better in one (written out, not imported)."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def brute_force_front(points):
    return [i for i, p in enumerate(points)
            if not any(_dominates_by_hand(q, p) for j, q in enumerate(points) if j != i)]


def test_dominates_is_no_worse_in_every_objective_and_better_in_one():
    assert dominates((1.0, 2.0), (1.0, 3.0)) and dominates((1.0, 2.0), (2.0, 2.0)) and dominates((0, 0), (1, 1))
    assert not dominates((1.0, 2.0), (1.0, 2.0))  # equal: neither dominates
    assert not dominates((1.0, 3.0), (2.0, 2.0)) and not dominates((2.0, 2.0), (1.0, 3.0))  # a trade-off
    assert not dominates((2.0, 3.0), (1.0, 2.0))


@pytest.mark.parametrize("seed", range(40))
def test_pareto_front_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(0, 40)
    # Small integer grids force ties in one or both objectives and exact duplicates.
    points = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(n)]
    assert pareto_front(points) == brute_force_front(points)


def test_pareto_front_is_non_dominated_and_complete():
    points = [(1.0, 5.0), (2.0, 3.0), (2.0, 3.0), (3.0, 3.0), (1.5, 6.0), (4.0, 1.0), (5.0, 1.0)]
    front = pareto_front(points)
    assert front == [0, 1, 2, 5]
    for i, j in itertools.permutations(front, 2):
        assert not _dominates_by_hand(points[i], points[j])
    for k in set(range(len(points))) - set(front):
        assert any(_dominates_by_hand(points[i], points[k]) for i in front)


def test_frontier_table_only_takes_feasible_finished_trials():
    df = pd.DataFrame([
        {"number": 0, "status": "complete", "val_bpb": 1.30, "artifact_bytes": 15_000_000},
        {"number": 1, "status": "infeasible_measured", "val_bpb": 1.10, "artifact_bytes": 16_000_001},
        {"number": 2, "status": "pruned", "val_bpb": None, "artifact_bytes": None},
        {"number": 3, "status": "complete", "val_bpb": 1.25, "artifact_bytes": 15_500_000},
        {"number": 4, "status": "complete", "val_bpb": 1.40, "artifact_bytes": 15_800_000},  # dominated by 0
        {"number": 5, "status": "failed", "val_bpb": None, "artifact_bytes": None},
    ])
    front = frontier_table(df)
    assert list(front["number"]) == [3, 0]
    assert "| number |" in markdown_table(front)


def _settings(tmp_path, **changes):
    values = dict(name="s1", space=str(tmp_path / "space.yaml"), storage=str(tmp_path), data_dir=str(tmp_path),
                  tokenizer=str(tmp_path / "tok.model"))
    values.update(changes)
    return SearchSettings(**values)


def test_settings_validate_and_round_trip(tmp_path):
    s = _settings(tmp_path, overrides=("train.compile=false",), budget_s=600, reduction_factor=3).validate()
    assert s.rung_s == pytest.approx(600 / 3)
    assert s.asha_max_t == pytest.approx(200)  # top rung strictly inside the budget
    # Saved with the first rung resolved, so a later default cannot move a saved search's rungs.
    assert SearchSettings.from_json(s.to_json()) == replace(s, grace_s=200.0)
    for bad, flag in [({"name": "bad name!"}, "--name"), ({"trials": 0}, "--trials"),
                      ({"sampler": "cmaes"}, "--sampler"), ({"gpus_per_trial": 2.5}, "--gpus-per-trial"),
                      ({"grace_s": 700.0}, "--grace-s"), ({"overrides": ("nokey",)}, "--set"),
                      ({"early_stopping": "median"}, "--early-stopping")]:
        with pytest.raises(SettingsError, match=flag):
            _settings(tmp_path, **bad).validate()


def test_unknown_search_lists_existing_ones(tmp_path):
    store.save_settings(_settings(tmp_path, name="alpha").validate())
    store.save_settings(_settings(tmp_path, name="beta").validate())
    with pytest.raises(store.UnknownSearchError, match="existing searches: alpha, beta"):
        store.load_settings("gamma", str(tmp_path))
    assert store.load_settings("beta", str(tmp_path)).name == "beta"
    assert store.study_url(store.load_settings("beta", str(tmp_path))).endswith("/beta/study.db")


def test_prepare_config_applies_budget_rungs_overrides_and_the_hard_limit(tmp_path):
    s = _settings(tmp_path, budget_s=90, grace_s=10, overrides=("train.compile=false", "export.limit_bytes=99000000"))
    cfg = prepare_config(from_dict({"model": {"unique_blocks": 3, "virtual_layers": [0, 1, 2, 1, 2]}}), s.validate())
    assert cfg.train.budget_s == 90 and cfg.train.compile is False
    plan = RungPlan.from_settings(s.validate())
    assert plan.at_s == (10, 30) and plan.every_s == 0  # ASHA's rungs only, by default
    assert cfg.export.limit_bytes == 16_000_000  # an override cannot raise the challenge's limit
    assert "u3 v5 sched=01212" in summarize(cfg)
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize("changes, rungs", [
    ({"budget_s": 180}, (60,)), ({"budget_s": 180, "grace_s": 20}, (20, 60)),
    ({"budget_s": 180, "grace_s": 10}, (10, 30, 90)),
    ({"budget_s": 1.5, "grace_s": 0.5, "reduction_factor": 2}, (0.5, 1.0)),
    ({"budget_s": 600}, (200,)), ({"budget_s": 100, "reduction_factor": 2.5}, (40,)),
])
def test_reports_come_where_ashas_rungs_are(tmp_path, changes, rungs):
    from search.tune.tuner import make_scheduler

    s = _settings(tmp_path, **changes).validate()
    assert s.asha_milestones_s == pytest.approx(rungs)
    plan = RungPlan.from_settings(s)
    assert plan.at_s == s.asha_milestones_s and plan.every_s == 0
    # The very floats Ray's ASHA decides at (grace * rf**k): a report at a milestone is never counted as early.
    assert tuple(sorted(m for m, _ in make_scheduler(s)._brackets[0]._rungs)) == s.asha_milestones_s
    periodic = RungPlan.from_settings(replace(s, report_every_s=15.0).validate())
    assert periodic.every_s == 15 and periodic.at_s == s.asha_milestones_s


def test_a_moved_first_rung_keeps_the_earlier_rungs_for_the_report(tmp_path):
    """`resume --from-study --grace-s`: new trials report at the new rungs; the earlier ones stay readable."""
    from search.tune.tuner import make_scheduler

    s = _settings(tmp_path, budget_s=180).validate()
    assert s.with_first_rung(60.0) is s  # the rung it has: nothing moves
    moved = s.with_first_rung(120.0)
    assert (moved.rung_s, moved.earlier_grace_s, moved.asha_milestones_s) == (120, (60,), (120,))
    assert moved.reported_milestones_s == (60, 120)
    assert RungPlan.from_settings(moved).at_s == (120,)  # trials launched from now report at 120 s only
    assert tuple(m for m, _ in make_scheduler(moved)._brackets[0]._rungs) == (120,)
    assert "rungs at 120 s (x3); first rung moved from 60 s on a resume" in moved.early_stopping_text
    assert SearchSettings.from_json(moved.to_json()) == moved
    again = moved.with_first_rung(20.0)  # moved twice: both earlier schedules stay (20 s: 20 and 60 s)
    assert again.earlier_grace_s == (60, 120) and again.reported_milestones_s == (20, 60, 120)
    with pytest.raises(SettingsError, match="--grace-s: must be below --budget-s"):
        s.with_first_rung(180.0)
    with pytest.raises(SettingsError, match="earlier_grace_s: earlier first rungs must lie inside the budget"):
        replace(moved, earlier_grace_s=(200.0,)).validate()  # a hand-edited search.json


def test_report_every_s_is_persisted_and_old_search_json_loads_with_its_periodic_reports(tmp_path):
    s = _settings(tmp_path, budget_s=180, report_every_s=30.0).validate()
    assert SearchSettings.from_json(s.to_json()).report_every_s == 30
    old = json.loads(_settings(tmp_path, budget_s=180).validate().to_json())
    del old["report_every_s"]  # written before the setting existed, when the trainer reported every rung_s
    old["grace_s"] = 0.0  # ... and when 0 meant budget/rf^2
    loaded = SearchSettings.from_json(json.dumps(old))
    assert loaded.report_every_s == loaded.rung_s == 20 and loaded.asha_milestones_s == (20, 60)
    with pytest.raises(SettingsError, match="--report-every-s"):
        _settings(tmp_path, report_every_s=-1.0).validate()


def test_run_flag_report_every_s(tmp_path):
    from search.cli import build_parser, settings_from_args

    for path in ("space.yaml", "tok.model"):
        (tmp_path / path).write_text("")
    base = ["run", "--name", "s1", "--space", str(tmp_path / "space.yaml"), "--data", str(tmp_path),
            "--tokenizer", str(tmp_path / "tok.model"), "--storage", str(tmp_path)]
    assert settings_from_args(build_parser().parse_args(base)).report_every_s == 0
    assert settings_from_args(build_parser().parse_args(base + ["--report-every-s", "12"])).report_every_s == 12


def test_saved_searches_with_the_old_rung_overrides_read_as_the_new_settings(tmp_path):
    """search.json of a search run with `--set train.rung_roundtrip=true` (the way before the flags): the override
    becomes the setting, once, and leaves the run configs; the report times the search set itself are dropped."""
    s = _settings(tmp_path, budget_s=180).validate()
    old = json.loads(s.to_json())
    for key in ("rung_roundtrip", "rung_cooldown_fraction"):
        del old[key]  # written before the settings existed
    old["overrides"] = ["train.rung_roundtrip=true", "train.compile=false", "train.rung_cooldown_fraction=0.1",
                        "train.report_every_s=30", "train.report_at_s=[60]"]
    loaded = SearchSettings.from_json(json.dumps(old))
    assert (loaded.rung_roundtrip, loaded.rung_cooldown_fraction) == (True, 0.1)
    assert loaded.overrides == ("train.compile=false",) and loaded.report_every_s == 0
    assert RungPlan.from_settings(loaded) == RungPlan((60.0,), 0.0, True, 0.1)
    assert SearchSettings.from_json(loaded.to_json()) == loaded  # saved again: already translated
    cfg = prepare_config(from_dict({}), loaded)
    assert cfg.train.compile is False and "rung_roundtrip" not in cfg.to_dict()["train"]
    with pytest.raises(SettingsError, match="--rung-cooldown-fraction: 0.2 and --set train.rung_cooldown_fraction"):
        _settings(tmp_path, rung_cooldown_fraction=0.2, overrides=("train.rung_cooldown_fraction=0.1",)).validate()
    with pytest.raises(SettingsError, match="--rung-cooldown-fraction: 0.7 must be 0"):
        _settings(tmp_path, overrides=("train.rung_cooldown_fraction=0.7",)).validate()
    with pytest.raises(SettingsError, match="--rung-roundtrip"):
        _settings(tmp_path, overrides=("train.rung_roundtrip=maybe",)).validate()
    # Every train key the trainer no longer reads is one the search translates.
    from search.settings import MOVED_TRAIN_KEYS
    from trainer.run_config import RETIRED_TRAIN_KEYS

    assert set(MOVED_TRAIN_KEYS) == set(RETIRED_TRAIN_KEYS)


def test_run_flags_for_rung_scoring_and_the_old_way_of_setting_them(tmp_path):
    from search.cli import build_parser, settings_from_args

    for path in ("space.yaml", "tok.model"):
        (tmp_path / path).write_text("")
    base = ["run", "--name", "s1", "--space", str(tmp_path / "space.yaml"), "--data", str(tmp_path),
            "--tokenizer", str(tmp_path / "tok.model"), "--storage", str(tmp_path)]
    plain = settings_from_args(build_parser().parse_args(base))
    assert (plain.rung_roundtrip, plain.rung_cooldown_fraction) == (False, 0.0)
    flags = settings_from_args(build_parser().parse_args(
        base + ["--rung-roundtrip", "--rung-cooldown-fraction", "0.1"]))
    old_way = settings_from_args(build_parser().parse_args(
        base + ["--set", "train.rung_roundtrip=true", "--set", "train.rung_cooldown_fraction=0.1"]))
    assert flags == old_way and (flags.rung_roundtrip, flags.rung_cooldown_fraction) == (True, 0.1)
    assert old_way.overrides == ()


def test_early_stopping_none_stops_nothing_and_keeps_the_rungs(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.cli import build_parser, settings_from_args
    from search.tune.tuner import make_scheduler

    for path in ("space.yaml", "tok.model"):
        (tmp_path / path).write_text("")
    base = ["run", "--name", "s1", "--space", str(tmp_path / "space.yaml"), "--data", str(tmp_path),
            "--tokenizer", str(tmp_path / "tok.model"), "--storage", str(tmp_path), "--budget-s", "180"]
    asha = settings_from_args(build_parser().parse_args(base))
    none = settings_from_args(build_parser().parse_args(base + ["--early-stopping", "none"]))
    assert asha.early_stopping == "asha" and isinstance(make_scheduler(asha), ASHAScheduler)
    assert none.early_stopping == "none" and type(make_scheduler(none)) is FIFOScheduler
    # Trials still report (and checkpoint) at the rungs: the fidelity table is what the setting is for.
    assert RungPlan.from_settings(none).at_s == asha.asha_milestones_s == (60,)
    assert SearchSettings.from_json(none.to_json()).early_stopping == "none"
    old = json.loads(asha.to_json())
    del old["early_stopping"]  # written before the setting existed: ASHA, as then
    assert SearchSettings.from_json(json.dumps(old)).early_stopping == "asha"
    with pytest.raises(SystemExit):  # argparse names the choices
        build_parser().parse_args(base + ["--early-stopping", "median"])


def test_constraint_reads_excess_bytes():
    class Frozen:
        user_attrs = {"constraint_excess_bytes": 1234}

    assert excess_bytes_constraint(Frozen()) == [1234.0]
    Frozen.user_attrs = {}
    assert excess_bytes_constraint(Frozen()) == [0.0]


def test_only_single_process_trials_on_local_storage_reuse_workers(tmp_path):
    from search.tune.trainable import reuses_workers

    base = SearchSettings(name="s", space="x.yaml", storage=str(tmp_path), data_dir="d", tokenizer="t")
    assert reuses_workers(base) and reuses_workers(dataclasses.replace(base, gpus_per_trial=0.5))
    assert not reuses_workers(dataclasses.replace(base, gpus_per_trial=2.0))  # DDP: Ray Train workers
    assert not reuses_workers(dataclasses.replace(base, extra={"cpu_ddp_workers": 2}))
    assert not reuses_workers(dataclasses.replace(base, storage="s3://bucket/runs"))  # run/ is not in storage


def test_a_reused_worker_starts_its_trial_with_fresh_compile_caches(monkeypatch):
    # A trial's compiled graphs must not count against the next trial's recompile limit: past it, dynamo runs
    # the model in eager mode without failing, and the trial's speed would no longer be its own.
    import torch
    import torch._dynamo

    from search.tune import trainable

    compiles = []

    def backend(gm, _inputs):
        compiles.append(1)
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(trainable, "_trials_in_process", 1)  # a worker that has run one trial

    @torch.compile(backend=backend, dynamic=False)
    def double(x):
        return x * 2

    # dynamo's own patch restores the setting on exit (monkeypatch's undo can delete a config entry instead).
    with torch._dynamo.config.patch(recompile_limit=2):
        try:
            for n in (1, 2):  # the "previous trial" uses up the limit
                double(torch.ones(n))
            assert trainable.start_clean() == 2
            double(torch.ones(3))
            assert len(compiles) == 3  # compiled again, not eager
            trainable.start_clean()
            double(torch.ones(4))
            assert len(compiles) == 4
        finally:
            torch._dynamo.reset()  # no compiled graph of this test is left for the next one
