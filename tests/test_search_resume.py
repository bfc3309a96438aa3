"""Kill the search driver mid-search (SIGKILL to its process group), resume it, lose no finished trial."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.analysis import device_use

from search import store
from search.tune.lease import device_key
from search.analysis.report import load_study
from tests.search_fixtures import cli_env, write_space

REPO = Path(__file__).resolve().parent.parent
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def _count(db: Path, sql: str) -> int:
    """One COUNT(*) over the study database, read-only; 0 while it does not exist or is busy."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0  # tables not created yet, or locked for a moment


def _finished_launched(db: Path) -> int:
    """Launched trials (with a Tune id) that have finished, read straight from the study database."""
    return _count(db, "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                      "WHERE a.key = 'tune_trial_id' AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')")


def test_resume_after_killing_the_driver(tmp_path, tiny_corpus):
    storage, name = tmp_path / "runs", "killed"
    space = write_space(tmp_path)
    env = {**cli_env(), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = [sys.executable, str(REPO / "tests" / "search_fixtures.py")]
    run = ["run", "--space", str(space), "--name", name, "--storage", str(storage), "--trials", "8",
           "--gpus-per-trial", "0", "--max-concurrent", "2", "--budget-s", "2", "--grace-s", "0.5",
           "--reduction-factor", "2", "--seed", "1", "--ray-address", "local",
           "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"])]
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(driver + run, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the driver and the Ray it started
    db = storage / name / store.STUDY_FILE
    deadline = time.time() + 300
    try:
        # A trial in flight with a rung behind it: the kill must not cost it its device time so far.
        while _finished_launched(db) < 3 or _running_with_a_rung(db) < 1:
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "the search made no progress"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()

    settings = store.load_settings(name, str(storage))
    killed = [t for t in load_study(settings).get_trials(deepcopy=False)
              if t.state == TrialState.RUNNING and t.intermediate_values]
    assert killed
    for trial in killed:  # each rung report rewrote the trial's device time before Tune saw it
        [path] = (storage / name).glob(f"*{trial.user_attrs['tune_trial_id']}*/run/{device_use.FILE}")
        entry = json.loads(path.read_text())
        assert entry["provisional"] is True and entry["train_s"] > 0
        assert entry["started_at"] <= entry["acquired_at"] <= entry["released_at"]
    assert {e["device"] for e in device_use.read_entries(storage / name)} == {device_key()}
    before = {t.number: (t.state, t.values, dict(t.intermediate_values))
              for t in load_study(settings).get_trials(deepcopy=False) if t.state != TrialState.RUNNING}
    launched_before = sum(1 for t in load_study(settings).get_trials(deepcopy=False)
                          if t.user_attrs.get("tune_trial_id") and t.state != TrialState.RUNNING)
    assert launched_before < 8, "the driver was killed after the search had already finished"

    out = subprocess.run(driver + ["resume", name, "--storage", str(storage)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    after = {t.number: t for t in load_study(settings).get_trials(deepcopy=False)}
    for number, (state, values, intermediate) in before.items():  # nothing finished was lost or changed
        assert after[number].state == state and after[number].values == values
        assert after[number].intermediate_values == intermediate
    assert all(t.state != TrialState.RUNNING for t in after.values())
    launched = [t for t in after.values() if t.user_attrs.get("tune_trial_id")]
    finished_ok = [t for t in launched if t.user_attrs["status"] in ("complete", "pruned", "infeasible_measured")]
    # Every one of the 8 requested trials ran to an outcome (at most the ones in flight at the kill may be
    # recorded as failed-orphans if Tune had not checkpointed them yet).
    assert len(finished_ok) >= 8 - 2 and len(launched) >= 8
    assert (storage / name / "report" / "report.md").is_file()


def _running_with_a_rung(db: Path) -> int:
    """Launched trials still RUNNING that have reported at least one rung."""
    return _count(db, "SELECT COUNT(DISTINCT t.trial_id) FROM trials t "
                      "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'tune_trial_id' "
                      "JOIN trial_intermediate_values v ON v.trial_id = t.trial_id WHERE t.state = 'RUNNING'")


def _sigint_once_a_rung_is_in(command: list[str], env: dict, tmp_path: Path, db: Path) -> Path:
    """Start a search driver, send it SIGINT once a trial in flight has reported a rung, check that it exits
    cleanly; return its log."""
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 300
        try:
            while _running_with_a_rung(db) < 1:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, "no trial reached its first rung"
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)  # to the driver only, as a terminal's Ctrl-C reaches Tune's handler
            assert proc.wait(timeout=180) == 0, log_path.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return log_path


def test_sigint_keeps_in_flight_trials_resumable(tmp_path, tiny_corpus):
    """Ctrl-C (or a job's time limit sending SIGINT) stops the driver: trials in flight are `interrupted`,
    not failed, and `resume` finishes them from their checkpoints."""
    storage, name = tmp_path / "runs", "stopped"
    space = write_space(tmp_path)
    env = cli_env()
    driver = [sys.executable, str(REPO / "tests" / "search_fixtures.py")]
    run = ["run", "--space", str(space), "--name", name, "--storage", str(storage), "--trials", "6",
           "--gpus-per-trial", "0", "--max-concurrent", "2", "--budget-s", "4", "--grace-s", "0.5",
           "--reduction-factor", "2", "--seed", "3", "--ray-address", "local",
           "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"])]
    log_path = _sigint_once_a_rung_is_in(driver + run, env, tmp_path, storage / name / store.STUDY_FILE)
    assert f"python -m search resume {name}" in log_path.read_text()

    settings = store.load_settings(name, str(storage))
    trials = load_study(settings).get_trials(deepcopy=False)
    interrupted = [t.number for t in trials if t.user_attrs.get("status") == "interrupted"]
    assert interrupted and all(t.state == TrialState.RUNNING for t in trials if t.number in interrupted)
    assert not [t for t in trials if t.state == TrialState.FAIL], "a stopped driver must not fail its trials"

    out = subprocess.run(driver + ["resume", name, "--storage", str(storage)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = {t.number: t for t in load_study(settings).get_trials(deepcopy=False)}
    for number in interrupted:  # resumed from their checkpoints and finished with a real outcome
        assert after[number].user_attrs["status"] in ("complete", "pruned", "infeasible_measured"), \
            after[number].user_attrs
        assert after[number].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert all(t.state != TrialState.RUNNING for t in after.values())


def test_interrupt_after_sends_one_sigint_and_is_cancelled_on_exit():
    from search.settings import SettingsError
    from search.tune.tuner import interrupt_after

    # Python's own SIGINT handler, whatever an in-process Tune run of an earlier test left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        start = time.time()
        try:
            with interrupt_after(0.3):
                time.sleep(10)
            raise AssertionError("no SIGINT arrived")
        except KeyboardInterrupt:  # as Ctrl-C
            assert 0.25 < time.time() - start < 5
        with interrupt_after(0.3):
            pass
        time.sleep(0.6)  # left early: the timer is cancelled, no stray SIGINT
    finally:
        signal.signal(signal.SIGINT, previous)
    with interrupt_after(0):
        time.sleep(0.05)
    try:
        with interrupt_after(-1):
            pass
        raise AssertionError("a negative time was accepted")
    except SettingsError as exc:
        assert "--stop-after-s" in str(exc)


def test_stop_after_s_stops_the_driver_and_leaves_the_search_resumable(tmp_path, tiny_corpus):
    """`run --stop-after-s`: the driver stops itself, as Ctrl-C would, for a machine held for a fixed time."""
    storage, name = tmp_path / "runs", "timed"
    run = ["run", "--space", str(write_space(tmp_path)), "--name", name, "--storage", str(storage),
           "--trials", "4", "--gpus-per-trial", "0", "--max-concurrent", "2", "--budget-s", "60",
           "--grace-s", "0.5", "--reduction-factor", "2", "--seed", "3", "--ray-address", "local",
           "--stop-after-s", "8", "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"])]
    start = time.time()
    out = subprocess.run([sys.executable, str(REPO / "tests" / "search_fixtures.py"), *run], cwd=REPO,
                         env=cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert time.time() - start < 200  # no trial can finish 60 s of training: the timer ended the search
    assert f"python -m search resume {name}" in out.stdout + out.stderr
    trials = load_study(store.load_settings(name, str(storage))).get_trials(deepcopy=False)
    assert any(t.user_attrs.get("status") == "interrupted" for t in trials)
    assert not [t for t in trials if t.state == TrialState.FAIL], "a stopped driver must not fail its trials"
    assert (storage / name / "report" / "summary.json").is_file()  # the report is written on the way out


def test_resume_from_study_alone_restarts_in_flight_trials_and_finishes(tmp_path, tiny_corpus):
    """Tune's state left behind (another machine, no checkpoints carried): `resume --from-study` goes on from
    study.db and search.json alone; trials in flight start again as new trials and the count is kept."""
    storage, name = tmp_path / "runs", "moved"
    env = cli_env()
    driver = [sys.executable, str(REPO / "tests" / "search_fixtures.py")]
    run = ["run", "--space", str(write_space(tmp_path)), "--name", name, "--storage", str(storage), "--trials", "4",
           "--gpus-per-trial", "0", "--max-concurrent", "2", "--budget-s", "2", "--grace-s", "0.5",
           "--reduction-factor", "2", "--seed", "5", "--ray-address", "local",
           "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"])]
    _sigint_once_a_rung_is_in(driver + run, env, tmp_path, storage / name / store.STUDY_FILE)
    settings = store.load_settings(name, str(storage))
    before = {t.number: t for t in load_study(settings).get_trials(deepcopy=False)}
    interrupted = [n for n, t in before.items() if t.user_attrs.get("status") == "interrupted"]
    assert interrupted
    # What a fresh machine gets: the study, search.json and the trials' logs; no Tune state, no checkpoints.
    search_dir = storage / name
    for path in list(search_dir.iterdir()):
        if path.is_file() and not path.name.startswith((store.STUDY_FILE, "search.json")):
            path.unlink()
    for checkpoint in list(search_dir.glob("t*/checkpoint_*")):
        shutil.rmtree(checkpoint)
    refused = subprocess.run(driver + ["resume", name, "--storage", str(storage)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--from-study" in refused.stderr, refused.stderr[-2000:]

    out = subprocess.run(driver + ["resume", name, "--from-study", "--storage", str(storage)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = load_study(settings).get_trials(deepcopy=False)
    assert all(t.state != TrialState.RUNNING for t in after)
    for number in interrupted:  # failed with the reason, and its config ran again to a real outcome
        old = next(t for t in after if t.number == number)
        assert old.state == TrialState.FAIL and "started again" in old.user_attrs["reason"]
        again = [t for t in after if t.number > number and t.params == old.params and t.user_attrs.get("tune_trial_id")]
        assert again and again[0].user_attrs["status"] in ("complete", "pruned", "infeasible_measured")
    counted = [t for t in after if t.user_attrs.get("tune_trial_id") and not t.user_attrs.get("requeued_as_new_trial")]
    assert len(counted) == settings.trials  # the restarts took the interrupted trials' places, no more
    for n, t in before.items():  # nothing finished before the move is lost or changed
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            assert after[n].state == t.state and after[n].user_attrs["status"] == t.user_attrs["status"]


def test_drain_after_s_launches_nothing_more_and_lets_trials_in_flight_finish(tmp_path, tiny_corpus):
    """`run --drain-after-s`: after it, no new trial; those in flight run to their end (none is cut short), and
    `resume --from-study` launches the rest."""
    storage, name = tmp_path / "runs", "drained"
    driver = [sys.executable, str(REPO / "tests" / "search_fixtures.py")]
    run = ["run", "--space", str(write_space(tmp_path)), "--name", name, "--storage", str(storage),
           "--trials", "5", "--gpus-per-trial", "0", "--max-concurrent", "2", "--budget-s", "2",
           "--grace-s", "0.5", "--reduction-factor", "2", "--seed", "7", "--ray-address", "local",
           "--drain-after-s", "2", "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"])]
    out = subprocess.run(driver + run, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"python -m search resume {name} --from-study" in out.stdout
    settings = store.load_settings(name, str(storage))
    trials = load_study(settings).get_trials(deepcopy=False)
    launched = [t for t in trials if t.user_attrs.get("tune_trial_id")]
    assert 1 <= len(launched) < settings.trials  # a trial takes longer than 2 s: the first ones only
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in launched)  # none cut short

    for flags in (["--drain-after-s", "5"], ["--grace-s", "1"]):  # Tune's own state keeps its deadline and rungs
        refused = subprocess.run(driver + ["resume", name, *flags, "--storage", str(storage)], cwd=REPO,
                                 env=cli_env(), capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "--from-study" in refused.stderr, refused.stderr[-2000:]
    # The rest launch with the first rung moved from 0.5 s (rungs 0.5 and 1 s) to 1 s.
    again = subprocess.run(driver + ["resume", name, "--from-study", "--grace-s", "1", "--storage", str(storage)],
                           cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "first rung moved from 0.5 s to 1 s" in again.stdout
    moved = store.load_settings(name, str(storage))
    assert (moved.rung_s, moved.earlier_grace_s) == (1.0, (0.5,))
    after = load_study(settings).get_trials(deepcopy=False)
    assert not [t for t in after if t.user_attrs.get("requeued_as_new_trial")]  # nothing was in flight
    assert len([t for t in after if t.user_attrs.get("tune_trial_id")]) == settings.trials
    assert all(t.state != TrialState.RUNNING for t in after)
    first = {t.number for t in launched}
    for t in after:
        times = [s for s, _ in t.user_attrs.get("rungs") or []]
        if t.number in first:
            assert times and times[0] < 1.0  # reported at the 0.5 s rung
        elif t.user_attrs.get("tune_trial_id"):
            assert times and min(times) >= 1.0, (t.number, times)  # the moved rung only
    fidelity = json.loads((storage / name / "report" / "summary.json").read_text())
    assert fidelity["rungs_s"] == [1.0] and fidelity["earlier_first_rungs_s"] == [0.5]
    report = (storage / name / "report" / "report.md").read_text()
    assert "first rung moved from 0.5 s on a resume" in report


@pytest.mark.parametrize("argv", [
    ["run", "--name", "x", "--drain-after-s", "-5"],
    ["run", "--name", "x", "--stop-after-s", "-1"],
    ["resume", "x", "--stop-after-s", "nan"],
])
def test_negative_stop_or_drain_times_are_refused_before_anything_starts(argv, capsys):
    from search.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "must be 0 (no limit) or a positive number of seconds" in err and "-after-s" in err
