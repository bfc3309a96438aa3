"""The Optuna bridge on its own (real Optuna, no Tune run): size gate, honest states, persistence."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.tune.searcher import RecurrenceSearcher, fail_orphans, open_study
from tests.search_fixtures import tiny_settings, write_space


@pytest.fixture
def settings(tmp_path, tiny_corpus):
    return tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "unit", seed=3)


def _states(settings):
    study = open_study(settings)
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def test_suggest_never_returns_a_config_predicted_over_the_limit(settings):
    searcher = RecurrenceSearcher(settings)
    configs = [searcher.suggest(f"tune{i}") for i in range(10)]
    trials = _states(settings)
    launched = {c["optuna_number"] for c in configs}
    rejected = [t for t in trials.values() if t.user_attrs.get("status") == "infeasible_predicted"]
    assert rejected, "the tiny space's d2048 width should have been proposed and rejected"
    for t in rejected:
        # Told to Optuna as not run, with the predicted excess as its (violated) constraint.
        assert t.state == TrialState.PRUNED and t.number not in launched
        assert t.constraints and list(t.constraints.values())[0] > 0
        assert t.user_attrs["predicted_fits"] is False
    for c in configs:
        t = trials[c["optuna_number"]]
        assert t.state == TrialState.RUNNING and t.user_attrs["predicted_fits"] is True
        assert t.user_attrs["predicted_artifact_bytes"] <= 16_000_000
        assert c["run"]["train"]["budget_s"] == settings.budget_s
    assert searcher.rejected == len(rejected)


def test_completion_states_are_honest(settings):
    searcher = RecurrenceSearcher(settings)
    ids = [f"t{i}" for i in range(5)]
    numbers = {tid: searcher.suggest(tid)["optuna_number"] for tid in ids}
    rung = {"train_s": 0.5, "val_bpb": 2.0, "time_total_s": 3.0}
    for tid in ids:
        searcher.on_trial_result(tid, rung)
    # t0: ASHA stopped it at its second rung (that result only reaches on_trial_complete).
    searcher.on_trial_complete("t0", {"train_s": 1.0, "val_bpb": 1.9, "time_total_s": 4.0, "startup_s": 0.2,
                                      "compile_s": 0.3, "wait_s": 0.4})
    # t1: finished and measured within the limit.
    final = {"final": True, "val_bpb": 1.5, "artifact_bytes": 40_000, "final_train_s": 1.5, "time_total_s": 5.0}
    searcher.on_trial_complete("t1", final)
    # t2: the trainer diverged.
    searcher.on_trial_complete("t2", {"failed": True, "fail_reason": "diverged: loss nan", "time_total_s": 1.0})
    # t3: finished but the measured artifact is over the limit.
    searcher.on_trial_complete("t3", {**final, "artifact_bytes": 16_000_100, "over_limit": True})
    # t4: the trainable raised inside Tune.
    searcher.on_trial_complete("t4", None, error=True)

    trials = _states(settings)
    t0, t1, t2, t3, t4 = (trials[numbers[t]] for t in ids)
    assert t0.state == TrialState.PRUNED and t0.user_attrs["status"] == "pruned"
    assert t0.intermediate_values == {500: 2.0, 1000: 1.9}  # step = training milliseconds
    # what the stopping rung said of the time before training stays with the pruned trial
    assert (t0.user_attrs["startup_s"], t0.user_attrs["compile_s"], t0.user_attrs["wait_s"]) == (0.2, 0.3, 0.4)
    assert t1.state == TrialState.COMPLETE and t1.value == 1.5 and t1.user_attrs["status"] == "complete"
    assert list(t1.constraints.values())[0] <= 0
    assert t2.state == TrialState.FAIL and t2.user_attrs["reason"] == "diverged: loss nan"
    assert t3.user_attrs["status"] == "infeasible_measured" and list(t3.constraints.values())[0] == 100
    assert t4.state == TrialState.FAIL and "raised" in t4.user_attrs["reason"]
    assert t1.user_attrs["gpu_s"] == 0.0 and t1.user_attrs["device_s"] == 5.0


def test_searcher_survives_pickling_and_reattaches_trials(settings, tmp_path):
    searcher = RecurrenceSearcher(settings)
    number = searcher.suggest("a")["optuna_number"]
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    fresh = pickle.loads(pickle.dumps(RecurrenceSearcher(settings)))  # how Tune stores it in tuner.pkl
    fresh.restore(str(path))
    assert fresh.suggest("a")["optuna_number"] == number  # same trial, not a new one
    fresh.on_trial_complete("a", {"final": True, "val_bpb": 1.4, "artifact_bytes": 10_000})
    assert _states(settings)[number].state == TrialState.COMPLETE


def test_unknown_tune_trial_is_reattached_by_optuna_number_and_orphans_fail(settings):
    searcher = RecurrenceSearcher(settings)
    n1 = searcher.suggest("x")["optuna_number"]
    n2 = searcher.suggest("y")["optuna_number"]
    other = RecurrenceSearcher(settings)  # a restored driver whose saved mapping predates x and y
    other.on_trial_complete("x-restored", {"final": True, "val_bpb": 1.3, "artifact_bytes": 9_000, "optuna_number": n1})
    assert fail_orphans(settings, "driver died") == 1
    trials = _states(settings)
    assert trials[n1].state == TrialState.COMPLETE
    assert trials[n2].state == TrialState.FAIL and trials[n2].user_attrs["reason"] == "driver died"


def test_nsga2_tells_both_objectives(settings):
    import dataclasses

    s = dataclasses.replace(settings, name="unit-nsga", sampler="nsga2", early_stopping="none").validate()
    searcher = RecurrenceSearcher(s)
    assert isinstance(searcher.study.sampler, optuna.samplers.NSGAIISampler)
    number = searcher.suggest("m")["optuna_number"]
    searcher.on_trial_result("m", {"train_s": 0.5, "val_bpb": 2.0})  # no intermediate values in multi-objective
    searcher.on_trial_complete("m", {"final": True, "val_bpb": 1.45, "artifact_bytes": 41_000})
    t = _states(s)[number]
    assert t.state == TrialState.COMPLETE and t.values == [1.45, 41_000.0]
    assert t.user_attrs["rungs"] == [[0.5, 2.0]] and not math.isnan(t.values[0])


# ---- --enqueue: known configs as the first trials -----------------------------------------------------------
def _point_file(settings, tmp_path, index: int = 0):
    """A run config file holding the index-th config of the tiny space that fits, and its assignment."""
    from spaces.space import load_space

    space = load_space(settings.space)
    fitting = [(a, cfg) for a, cfg in space.configs() if cfg.model.model_dim < 2048]
    assignment, cfg = fitting[index]
    path = tmp_path / f"known{index}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path, assignment, cfg


def test_enqueued_configs_are_the_first_trials_handed_out(settings, tmp_path):
    from search.tune.searcher import enqueue_points, space_points

    files = [_point_file(settings, tmp_path, i) for i in (3, 1)]
    enqueue_points(settings, space_points(settings, [str(path) for path, _, _ in files]))
    from search.analysis.report import trials_table

    table = trials_table(open_study(settings))
    assert list(table["status"]) == ["queued", "queued"] and list(table["enqueued_from"]) == ["known3", "known1"]
    searcher = RecurrenceSearcher(settings)
    for k, (path, assignment, cfg) in enumerate(files):
        out = searcher.suggest(f"tune{k}")
        trial = _states(settings)[out["optuna_number"]]
        assert trial.params == assignment and trial.user_attrs["enqueued_from"] == path.stem
        assert out["run"]["model"] == cfg.to_dict()["model"]
    later = searcher.suggest("tune9")  # then the sampler proposes its own
    assert "enqueued_from" not in _states(settings)[later["optuna_number"]].user_attrs


def test_a_config_outside_the_space_is_refused_by_name(settings, tmp_path):
    from search.tune.searcher import space_points
    from search.settings import SettingsError

    path, _, cfg = _point_file(settings, tmp_path)
    outside = tmp_path / "outside.yaml"
    data = cfg.to_dict()
    data["model"]["model_dim"] = 24  # no such width in the tiny space
    data["model"]["num_heads"], data["model"]["num_kv_heads"] = 3, 1
    outside.write_text(yaml.safe_dump(data))
    with pytest.raises(SettingsError, match=r"--enqueue .*outside\.yaml.*no point of the space"):
        space_points(settings, [str(path), str(outside)])
    assert [p for p, _ in space_points(settings, [str(path), str(outside)], skip_outside=True)] == [str(path)]


def test_enqueue_presets_takes_the_presets_of_the_default_space(settings, capsys):
    import dataclasses

    from search.cli import PRESETS_DIR, _with_enqueued

    default = dataclasses.replace(settings, space=str(PRESETS_DIR.parent / "default.yaml"))
    queued, points = _with_enqueued(default, [], presets=True)
    outside = {"record_0331_mini_recurrence", "record_0331_fit"}  # techniques the default space does not search
    assert sorted(Path(p).stem for p in queued.enqueue) == sorted(
        p.stem for p in PRESETS_DIR.glob("*.yaml") if p.stem not in outside)
    assert [p for p, _ in points] == list(queued.enqueue)
    tiny, _ = _with_enqueued(settings, [], presets=True)  # the tiny space holds none of them
    assert tiny.enqueue == () and "not enqueued: baseline" in capsys.readouterr().out


def test_a_repeat_of_a_launched_config_is_never_launched(settings, tmp_path):
    _, assignment, cfg = _point_file(settings, tmp_path, 2)
    searcher = RecurrenceSearcher(settings)
    study = open_study(settings)
    study.enqueue_trial(assignment)
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", {"final": True, "val_bpb": 1.4, "artifact_bytes": 10_000})
    study.enqueue_trial(assignment)  # what TPE does when it draws its best point again
    second = searcher.suggest("b")
    trials = _states(settings)
    repeats = [t for t in trials.values() if t.user_attrs.get("status") == "repeat"]
    assert len(repeats) == 1 and searcher.repeats == 1
    assert repeats[0].state == TrialState.PRUNED and repeats[0].params == assignment
    assert repeats[0].user_attrs["reason"] == f"same run config as trial {first['optuna_number']}; never launched"
    assert second["run"] != first["run"] and second["optuna_number"] > repeats[0].number
    # A failed trial's config may run again: the failure may have been the node's, not the config's.
    searcher.on_trial_complete("b", {"failed": True, "fail_reason": "CUDA error", "time_total_s": 1.0})
    study.enqueue_trial(trials[second["optuna_number"]].params)
    third = searcher.suggest("c")
    assert third["run"] == second["run"] and searcher.repeats == 1
    from search.analysis.report import summary, trials_table

    assert summary(trials_table(open_study(settings)), settings)["rejected_as_repeats"] == 1


# ---- pinned sampler, per-trial constraints, public API only --------------------------------------------------
def test_the_sampler_is_pinned_and_recorded_in_the_study(settings):
    import warnings

    with warnings.catch_warnings():  # no deprecated or experimental Optuna argument on the way
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        searcher = RecurrenceSearcher(settings)
        searcher.suggest("a")
        searcher.on_trial_complete("a", {"final": True, "val_bpb": 1.4, "artifact_bytes": 10_000})
    assert isinstance(searcher.study.sampler, optuna.samplers.TPESampler)
    assert open_study(settings).user_attrs["sampler"] == {
        "name": "TPESampler", "multivariate": True, "group": True, "constant_liar": True, "n_startup_trials": 10,
        "seed": 3, "optuna": optuna.__version__, "from_trial": 0}


def test_the_same_seed_proposes_the_same_configs(tmp_path, tiny_corpus):
    def proposals(name: str) -> list[dict]:
        s = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), name, seed=11)
        searcher = RecurrenceSearcher(s)
        out = []
        for i in range(14):  # past the 10 random startup trials, so TPE's own proposals are compared too
            config = searcher.suggest(f"t{i}")
            searcher.on_trial_complete(f"t{i}", {"final": True, "val_bpb": 2.0 - 0.01 * i,
                                                 "artifact_bytes": 10_000 + i})
            out.append(config["run"])
        return out

    assert proposals("first") == proposals("second")


def test_constraints_are_recorded_per_trial_for_the_states_samplers_learn_from(settings):
    searcher = RecurrenceSearcher(settings)
    numbers = {tid: searcher.suggest(tid)["optuna_number"] for tid in ("ok", "over", "cut", "bad")}
    searcher.on_trial_complete("ok", {"final": True, "val_bpb": 1.5, "artifact_bytes": 15_999_000})
    searcher.on_trial_complete("over", {"final": True, "val_bpb": 1.4, "artifact_bytes": 16_000_250})
    searcher.on_trial_complete("cut", {"train_s": 0.5, "val_bpb": 2.5})
    searcher.on_trial_complete("bad", {"failed": True, "fail_reason": "diverged"})
    trials = _states(settings)
    assert trials[numbers["ok"]].constraints == {"excess_bytes": -1_000.0}
    assert trials[numbers["over"]].constraints == {"excess_bytes": 250.0}
    predicted = trials[numbers["cut"]].user_attrs["constraint_excess_bytes"]
    assert predicted < 0 and trials[numbers["cut"]].constraints == {"excess_bytes": float(predicted)}
    assert trials[numbers["bad"]].constraints == {}  # FAIL: no sampler reads it


def test_a_measured_size_over_the_limit_is_infeasible_whatever_the_trainer_flagged(settings):
    """The study's own limit decides: a final result over it is infeasible even when its over_limit flag is
    missing or False (a trainer that counted other code bytes), and one within it is feasible."""
    searcher = RecurrenceSearcher(settings)
    numbers = {tid: searcher.suggest(tid)["optuna_number"] for tid in ("unflagged", "flagged_false", "within")}
    final = {"final": True, "val_bpb": 1.4}
    searcher.on_trial_complete("unflagged", {**final, "artifact_bytes": 16_000_001})
    searcher.on_trial_complete("flagged_false", {**final, "artifact_bytes": 16_000_250, "over_limit": False})
    searcher.on_trial_complete("within", {**final, "val_bpb": 1.5, "artifact_bytes": 16_000_000})
    trials = _states(settings)
    for tid, excess in (("unflagged", 1.0), ("flagged_false", 250.0)):
        t = trials[numbers[tid]]
        assert t.state == TrialState.COMPLETE and t.user_attrs["status"] == "infeasible_measured", tid
        assert t.constraints == {"excess_bytes": excess} and f"{excess:,.0f} over the limit" in t.user_attrs["reason"]
    within = trials[numbers["within"]]
    assert within.user_attrs["status"] == "complete" and within.constraints == {"excess_bytes": 0.0}


def test_optuna_reads_an_over_limit_trial_as_infeasible(settings):
    """What the constraint is for: Optuna's best trial is the best feasible one, never a better trial whose
    artifact was measured over the limit."""
    searcher = RecurrenceSearcher(settings)
    numbers = {tid: searcher.suggest(tid)["optuna_number"] for tid in ("fits", "over")}
    searcher.on_trial_complete("fits", {"final": True, "val_bpb": 1.5, "artifact_bytes": 15_000_000})
    searcher.on_trial_complete("over", {"final": True, "val_bpb": 1.2, "artifact_bytes": 16_000_100})
    study = open_study(settings)
    assert study.best_trial.number == numbers["fits"] and study.best_value == 1.5
    # Told within the limit, the same result is the best one (the constraint, not the value, excluded it).
    searcher.suggest("over_again")  # a new trial of its own, so this is no repeat
    searcher.on_trial_complete("over_again", {"final": True, "val_bpb": 1.2, "artifact_bytes": 14_000_000})
    assert open_study(settings).best_value == 1.2


def test_a_searcher_saved_by_the_earlier_optunasearch_class_restores(settings, tmp_path):
    from search.tune.searcher import SpaceDefineByRun, space_loader_of

    number = RecurrenceSearcher(settings).suggest("old")["optuna_number"]
    # What the OptunaSearch-based class's save() wrote: its attributes, trials as numbers, no study.
    saved = {"_settings": settings, "_space": SpaceDefineByRun(settings, space_loader_of(settings)),
             "_ot_trials": {"old": number}, "_ot_study": None, "_sampler": None, "_storage": None,
             "_study_name": settings.name, "_seed": None, "_points_to_evaluate": [], "_evaluated_rewards": [],
             "_completed_trials": set(), "_rungs": {"old": [[0.5, 2.0]]}, "_metric": "val_bpb", "_mode": "min",
             "_launch_until": None, "rejected": 2, "repeats": 1}
    path = tmp_path / "searcher-state.pkl"
    path.write_bytes(pickle.dumps(saved))
    fresh = RecurrenceSearcher(settings)
    fresh.restore(str(path))
    assert (fresh.rejected, fresh.repeats, fresh.metric, fresh.mode) == (2, 1, "val_bpb", "min")
    assert fresh.suggest("old")["optuna_number"] == number
    fresh.on_trial_complete("old", {"train_s": 1.0, "val_bpb": 1.9})
    t = _states(settings)[number]
    assert t.state == TrialState.PRUNED and t.user_attrs["rungs"] == [[0.5, 2.0], [1.0, 1.9]]


def test_nsga2_under_asha_is_refused_unless_asked_for(settings):
    import dataclasses
    import json

    from search.settings import SearchSettings, SettingsError

    with pytest.raises(SettingsError, match=r"--sampler nsga2 with --early-stopping asha: ASHA would stop trials on "
                                            r"val_bpb alone.*--early-stopping none, or --asha-with-nsga2"):
        dataclasses.replace(settings, sampler="nsga2").validate()
    allowed = dataclasses.replace(settings, sampler="nsga2", asha_with_nsga2=True).validate()
    assert SearchSettings.from_json(allowed.to_json()) == dataclasses.replace(allowed, grace_s=allowed.rung_s)
    old = json.loads(allowed.to_json())
    del old["asha_with_nsga2"]  # a search.json from before the check: it ran that way and still loads
    assert SearchSettings.from_json(json.dumps(old)).asha_with_nsga2 is True
    old_tpe = json.loads(settings.to_json())
    del old_tpe["asha_with_nsga2"]
    assert SearchSettings.from_json(json.dumps(old_tpe)).asha_with_nsga2 is False


def test_a_logger_whose_package_is_missing_is_refused_in_one_line(settings):
    import importlib.util

    from search.settings import SettingsError
    from search.tune.loggers import check_logger, logger_callbacks

    assert check_logger("") == "" and logger_callbacks(settings) == []
    for name in ("wandb", "mlflow"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(SettingsError, match=rf"--logger {name}: the {name} package is not installed; "
                                                    rf"`pip install {name}`"):
                check_logger(name)
        else:  # installed here: Ray's callback for it, named after the search
            import dataclasses

            (callback,) = logger_callbacks(dataclasses.replace(settings, logger=name))
            assert type(callback).__name__ == {"wandb": "WandbLoggerCallback", "mlflow": "MLflowLoggerCallback"}[name]


def test_run_refuses_nsga2_under_asha_and_a_missing_logger_before_anything_starts(tmp_path, capsys):
    import importlib.util

    from search.cli import build_parser, main, settings_from_args

    for path in ("space.yaml", "tok.model"):
        (tmp_path / path).write_text("")
    base = ["run", "--name", "s1", "--space", str(tmp_path / "space.yaml"), "--data", str(tmp_path),
            "--tokenizer", str(tmp_path / "tok.model"), "--storage", str(tmp_path / "runs")]
    assert main(base + ["--sampler", "nsga2"]) == 2
    assert "--asha-with-nsga2" in capsys.readouterr().err
    settings = settings_from_args(build_parser().parse_args(base + ["--sampler", "nsga2", "--asha-with-nsga2"]))
    assert settings.asha_with_nsga2 and settings.early_stopping == "asha"
    none = settings_from_args(build_parser().parse_args(base + ["--sampler", "nsga2", "--early-stopping", "none"]))
    assert not none.asha_with_nsga2
    missing = [name for name in ("mlflow", "wandb") if importlib.util.find_spec(name) is None]
    for name in missing:
        assert main(base + ["--logger", name]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--logger {name}: the {name} package is not installed" in err[0]
    assert not (tmp_path / "runs").exists()  # refused before a search folder was made


def test_a_study_from_before_the_record_gets_the_sampler_from_its_next_trial_on(settings):
    study = optuna.create_study(study_name=settings.name, storage=f"sqlite:///{_study_db(settings)}")
    study.tell(study.ask(), 1.0)  # one finished trial, made before samplers were recorded
    assert "sampler" not in study.user_attrs
    RecurrenceSearcher(settings)
    recorded = open_study(settings).user_attrs["sampler"]
    assert recorded["from_trial"] == 1 and recorded["name"] == "TPESampler"


def _study_db(settings):
    from search import store

    store.search_dir(settings).mkdir(parents=True, exist_ok=True)
    return store.search_dir(settings) / store.STUDY_FILE
