"""A real local Ray Tune search on the CPU (tiny model, tiny data), then its report and status via the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState

from search.analysis.pareto import dominates
from search.analysis.report import load_study
from search.vocabulary import WORKER_TRIAL
from search.tune.trainable import failure_reason, run_training
from tests.search_fixtures import cli_env, run_local_search, tiny_settings, write_space

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, tiny_corpus):
    """One 8-trial search, run in this process against a local Ray instance."""
    root = tmp_path_factory.mktemp("search_run")
    settings = tiny_settings(root / "runs", tiny_corpus, write_space(root), "cpu-search")
    start = time.perf_counter()
    run_local_search(settings)
    return settings, time.perf_counter() - start


def test_search_runs_all_trials_and_asha_prunes_some(finished_search):
    settings, seconds = finished_search
    trials = load_study(settings).get_trials(deepcopy=False)
    launched = [t for t in trials if t.user_attrs.get("tune_trial_id")]
    assert len(launched) == settings.trials == 8
    assert all(t.state != TrialState.RUNNING for t in trials)
    pruned = [t for t in launched if t.user_attrs["status"] == "pruned"]
    complete = [t for t in launched if t.user_attrs["status"] == "complete"]
    assert pruned, "ASHA should stop some trials at a rung"
    assert complete, "some trials should finish and export"
    for t in pruned:  # early stops are PRUNED in the study, with their rung values
        assert t.state == TrialState.PRUNED and t.intermediate_values
        assert "ASHA" in t.user_attrs["reason"]
    for t in complete:
        assert t.state == TrialState.COMPLETE and t.value == t.user_attrs["val_bpb"]
        assert 0 < t.user_attrs["artifact_bytes"] <= 16_000_000
        assert t.user_attrs["val_bpb"] > 0 and t.user_attrs["device_s"] > 0
        assert t.user_attrs["device"] == "cpu"  # what it trained on: `search fidelity` pools one kind only
    print(f"8-trial CPU search took {seconds:.1f}s")


def test_predicted_infeasible_configs_got_no_trial(finished_search):
    settings, _ = finished_search
    trials = load_study(settings).get_trials(deepcopy=False)
    rejected = [t for t in trials if t.user_attrs.get("status") == "infeasible_predicted"]
    folders = {p.name.split("_")[0] for p in Path(settings.storage, settings.name).glob("t[0-9]*_*")}
    for t in rejected:
        assert not t.user_attrs.get("tune_trial_id") and f"t{t.number:04d}" not in folders
        assert t.state == TrialState.PRUNED and list(t.constraints.values())[0] > 0
    assert len(folders) == settings.trials


def test_checkpoints_at_every_report(finished_search):
    settings, _ = finished_search
    trials = load_study(settings).get_trials(deepcopy=False)
    survivor = next(t for t in trials if t.user_attrs.get("status") == "complete")
    folder = next(Path(settings.storage, settings.name).glob(f"t{survivor.number:04d}_*"))
    checkpoints = sorted(folder.glob("checkpoint_*"))
    assert checkpoints and any((c / "trainer_state.rank0.pt").is_file() for c in checkpoints)
    assert (folder / "run" / "model.ptz").is_file() and (folder / "run" / "metrics.json").is_file()


def test_trials_report_at_ashas_rungs_only(finished_search):
    settings, _ = finished_search
    assert settings.asha_milestones_s == (0.5, 1.0) and settings.report_every_s == 0
    trials = load_study(settings).get_trials(deepcopy=False)
    for t in (t for t in trials if t.user_attrs.get("status") == "complete"):
        times = [train_s for train_s, _ in t.user_attrs["rungs"]]
        assert len(times) == 2 and 0.5 <= times[0] < 1.0 <= times[1] < settings.budget_s, times
        folder = next(Path(settings.storage, settings.name).glob(f"t{t.number:04d}_*"))
        assert "] startup " in (folder / "run" / "train.log").read_text()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=cli_env())


def test_report_cli_writes_table_frontier_plot_and_summary(finished_search):
    settings, _ = finished_search
    out = _cli("report", settings.name, "--storage", settings.storage, "--format", "csv", "--plot", "frontier.png",
               cwd=REPO)
    assert out.returncode == 0, out.stderr
    folder = Path(settings.storage, settings.name, "report")
    table = pd.read_csv(folder / "trials.csv")
    summary = json.loads((folder / "summary.json").read_text())
    assert (folder / "frontier.png").stat().st_size > 5_000
    assert summary["gpu_s_on_predicted_infeasible"] == 0 and summary["launched_predicted_infeasible"] == 0
    assert summary["rejected_by_size_model"] == int((table["status"] == "infeasible_predicted").sum())
    assert summary["launched"] == 8 and summary["counts"]["pruned"] >= 1
    # The frontier is exactly the non-dominated set of feasible finished trials (brute force).
    cand = table[(table["status"] == "complete") & (table["artifact_bytes"] <= 16_000_000)]
    points = {int(r.number): (r.val_bpb, r.artifact_bytes) for r in cand.itertuples()}
    expected = {n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)}
    assert set(table.loc[table["on_frontier"], "number"]) == expected
    frontier = pd.read_csv(folder / "frontier.csv")
    assert set(frontier["number"]) == expected and summary["frontier_size"] == len(expected)
    assert not set(frontier["status"]) - {"complete"}

    for fmt, name in (("md", "report.md"), ("html", "report.html")):
        out = _cli("report", settings.name, "--storage", settings.storage, "--format", fmt, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert "Pareto frontier" in (folder / name).read_text()


def test_status_cli_and_unknown_name(finished_search):
    settings, _ = finished_search
    out = _cli("status", settings.name, "--storage", settings.storage, cwd=REPO)
    assert out.returncode == 0 and "8 launched trials finished (8 requested)" in out.stdout, out.stdout + out.stderr
    assert "GPU-s on them 0" in out.stdout
    out = _cli("status", "no-such-search", "--storage", settings.storage, cwd=REPO)
    assert out.returncode == 2 and "existing searches: cpu-search" in out.stderr


def test_run_refuses_an_existing_name(finished_search, tiny_corpus):
    settings, _ = finished_search
    out = _cli("run", "--space", settings.space, "--name", settings.name, "--storage", settings.storage,
               "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"]),
               "--ray-address", "local", cwd=REPO)
    assert out.returncode == 2 and "search resume" in out.stderr


def test_a_failing_trial_reports_its_reason(tmp_path, tiny_corpus, finished_search):
    settings, _ = finished_search
    reports = []
    config = {"run": json.loads(json.dumps(load_study(settings).trials[-1].user_attrs.get("run_config")
                                           or next(t.user_attrs["run_config"] for t in load_study(settings).trials
                                                   if "run_config" in t.user_attrs))),
              "optuna_number": 99}
    import dataclasses

    broken = dataclasses.replace(settings, tokenizer=str(tmp_path / "missing.model"))
    run_training(config, broken, lambda m, c: reports.append(m), None, tmp_path / "out")
    assert reports[-1]["failed"] and reports[-1]["optuna_number"] == 99
    assert (tmp_path / "out" / "failure.txt").is_file()
    from trainer.trainer import TrainingDiverged

    assert failure_reason(TrainingDiverged("training loss is nan at step 3")).startswith("diverged:")


def test_trials_reuse_warm_workers_and_keep_their_run_in_storage(finished_search):
    # reuse_actors: the 8 trials (2 at a time) run in a few worker processes, each process counting its trials
    # (worker_trial 1, 2, ...); a reused worker's trial still writes its run/ into its own storage folder (a
    # reused worker's Tune trial dir is a staging folder that never reaches storage).
    settings, _ = finished_search
    study = {t.number: t for t in load_study(settings).get_trials(deepcopy=False) if t.user_attrs.get("tune_trial_id")}
    by_pid: dict[int, list[int]] = {}
    reused = 0
    for number, t in study.items():
        (folder,) = Path(settings.storage, settings.name).glob(f"t{number:04d}_*")
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        (pid,) = {r["pid"] for r in rows}  # Tune adds the worker's pid to every result
        (worker_trial,) = {r[WORKER_TRIAL] for r in rows}
        by_pid.setdefault(pid, []).append(worker_trial)
        reused += worker_trial > 1
        assert t.user_attrs[WORKER_TRIAL] == worker_trial  # recorded in the study, shown in the report
        assert "unique_params" in (folder / "run" / "train.log").read_text()
        # the device timeline of a trial that has its GPU (here: CPU) to itself: no waits
        timeline = json.loads((folder / "run" / "device_time.json").read_text())
        assert timeline["wait_s"] == 0 and timeline["trials_per_gpu"] == 1 and timeline["worker_trial"] == worker_trial
        assert timeline["started_at"] <= timeline["acquired_at"] <= timeline["released_at"]
        if t.user_attrs["status"] == "complete":
            metrics = json.loads((folder / "run" / "metrics.json").read_text())
            assert metrics["val_bpb"] == t.user_attrs["val_bpb"] and (folder / "run" / "model.ptz").is_file()
    assert all(sorted(counts) == list(range(1, len(counts) + 1)) for counts in by_pid.values()), by_pid
    assert reused >= settings.trials // 2 and len(by_pid) < settings.trials, by_pid


def test_each_trial_folder_holds_its_own_run(finished_search):
    # Each trial writes its train.log into its own folder (Tune's reuse_actors once broke exactly this).
    settings, _ = finished_search
    for t in load_study(settings).get_trials(deepcopy=False):
        if not t.user_attrs.get("tune_trial_id"):
            continue
        (folder,) = Path(settings.storage, settings.name).glob(f"t{t.number:04d}_*")
        log = (folder / "run" / "train.log").read_text()
        assert log.count(" config ") == 1, log
        assert f"unique_params {t.user_attrs['unique_params']:,} " in log, (t.number, log[-500:])


def test_a_search_without_early_stopping_trains_every_trial_and_ranks_all_their_rungs(tmp_path, tiny_corpus):
    from search.analysis.report import study_fidelity, write_report

    settings = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "no-stop", trials=5,
                             early_stopping="none")
    run_local_search(settings)
    trials = load_study(settings).get_trials(deepcopy=False)
    launched = [t for t in trials if t.user_attrs.get("tune_trial_id")]
    assert len(launched) == 5
    assert all(t.user_attrs["status"] == "complete" and t.state == TrialState.COMPLETE for t in launched)
    for t in launched:  # every trial reported at both rungs (0.5 s and 1 s) and went on to the budget
        times = [train_s for train_s, _ in t.user_attrs["rungs"]]
        assert len(times) == 2 and 0.5 <= times[0] < 1.0 <= times[1] < settings.budget_s, times
    rows = study_fidelity(load_study(settings), settings)
    assert [(r.rung_s, r.n) for r in rows] == [(0.5, 5), (1.0, 5)]
    finals = {t.number: t.user_attrs["val_bpb"] for t in launched}
    winner = min(finals, key=finals.get)
    for k, row in enumerate(rows):  # the cut's cost, from each trial's k-th rung value
        at = {t.number: t.user_attrs["rungs"][k][1] for t in launched}
        assert row.best_final_rank == 1 + sum(v < at[winner] for v in at.values())
        assert row.regret_kept >= 0 and (row.best_final_rank > 3 or row.regret_kept == 0)  # keeps ceil(5/2)
    report = write_report(settings, "md")["table"].read_text()
    assert "early stopping: none" in report and "best_final_rank" in report


def test_a_space_whose_base_alone_is_no_valid_config_runs_from_the_cli(tmp_path, tiny_corpus):
    """The record space's base names value-embedding depths 9 and 10, valid only with the 11 blocks its patterns
    give; the driver's data and memory checks start from a point of the space, never from the base alone."""
    import yaml

    space = yaml.safe_load(write_space(tmp_path).read_text())
    space["base"]["model"].update(value_embed_dim=8, value_embed_layers=[9, 10])
    space.update(unique_blocks=[11], patterns={"none": {}}, width=[16], untie_mlp=["none"])
    path = write_space(tmp_path, space)
    storage = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "search_fixtures.py"), "run", "--space", str(path), "--name", "deep",
         "--storage", str(storage), "--trials", "1", "--gpus-per-trial", "0", "--budget-s", "1", "--seed", "0",
         "--ray-address", "local", "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"])],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from search import store

    study = load_study(store.load_settings("deep", str(storage)))
    [trial] = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert trial.user_attrs["run_config"]["model"]["value_embed_layers"] == [9, 10]
