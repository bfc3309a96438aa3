"""Kill a worker node mid-trial: a real multi-node Ray cluster on this machine (a CPU-less head node and two
worker nodes, each its own raylet and object store), a search driven across the workers, one worker node
killed (SIGKILL) while a trial runs on it. The trial must be retried on the other node from its checkpoint, the
search must finish, and no trial that had finished before the kill may be lost or changed."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from ray.cluster_utils import Cluster

from search import store
from search.analysis.report import load_study, trials_table
from search.tune.trainable import NODE_KEY
from tests.search_fixtures import cli_env, write_space

REPO = Path(__file__).resolve().parent.parent
NAME = "multinode"
TRIALS = 3
# A report with a checkpoint every RUNG_S training seconds (--report-every-s: by default a search reports at ASHA's
# rungs only). With reduction factor 4, ASHA's rungs are at 1, 4 and 16 s; the reports in between can never stop a
# trial, so a trial caught two reports or more before its next rung (and its budget's end) has seconds of training
# left before anything could end it, and the kill lands while it is surely running.
# The long budget leaves room for the kill whichever way ASHA treats the second trial (see the test): on a busy
# CPU, with a 24 s budget, the leader (65 s of wall time with its reports) had finished before the second trial's
# slow start and first rung, leaving no trial to kill.
# The search starts with one 1-CPU worker up; --max-concurrent 2 stands (the second worker joins later), else the
# trials would run one after the other and the kill would have a single report's window.
RUNG_S, BUDGET_S, REDUCTION = 1.0, 48.0, 4
# Deadlines against a hang, not timings: on two cores shared with other work a trial's worker took over two
# minutes to start and report once (the driver's start, Ray's workers and torch's import all wait for a core).
WAIT_S, FINISH_S = 600, 600
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@pytest.fixture
def cluster():
    """A head node with no CPUs, so every trial lands on a worker node, and one 1-CPU worker node (the test
    adds the second); shut down whatever is left of it at the end, pass or fail."""
    # include_dashboard=False: nothing here needs it, and it would compete for the two shared cores.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        yield c
    finally:
        c.shutdown()  # kills every node still up (raylets, GCS, object stores) and the workers with them


def _study_states(db: Path) -> dict[int, str]:
    """Optuna state of each launched trial (one with a Tune id), read straight from the study database."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            rows = con.execute(
                "SELECT t.number, t.state FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE a.key = 'tune_trial_id'"
            ).fetchall()
    except sqlite3.Error:
        return {}  # tables not created yet, or locked for a moment
    return dict(rows)


def _experiment_dirs(session_dir: str) -> list[Path]:
    # The driver writes each trial's result.json (a line per result, as it processes it) under the Ray session,
    # <session>/artifacts/<timestamp>/<experiment>/driver_artifacts/, and copies it to storage only now and then.
    return sorted(Path(session_dir, "artifacts").glob(f"*/{NAME}"))


def _results(session_dir: str) -> dict[int, list[dict]]:
    """Every result the driver has processed, per Optuna trial number, in order."""
    out: dict[int, list[dict]] = {}
    for exp in _experiment_dirs(session_dir):
        for path in sorted(exp.glob("driver_artifacts/t*/result.json")):
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line being written right now
                out.setdefault(int(row["optuna_number"]), []).append(row)
    return out


def _trial_dir(storage: Path, number: int) -> Path:
    """The trial's folder in the search's storage: checkpoints, error.txt, and run/ (train.log, artifact)."""
    dirs = list((storage / NAME).glob(f"t{number:04d}_*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def _victim(states: dict[int, str], results: dict[int, list[dict]], asha_rungs_s: tuple[float, ...]) -> int | None:
    """A running trial that can be killed with a checkpoint to resume from and training still ahead of it."""
    for number, state in sorted(states.items()):
        rows = [r for r in results.get(number, []) if "train_s" in r]
        # Two results or more: Tune asks the trial for the checkpoint of a result before it runs it further, so
        # the first one is registered. done=False: ASHA let it continue. Two report intervals or more before its
        # next ASHA rung and before its final result, so the kill lands before either can end it (a trial caught
        # a second before the 16 s rung was stopped there before the kill landed, and never retried).
        if state == "RUNNING" and len(rows) >= 2 and not rows[-1]["done"]:
            train_s = rows[-1]["train_s"]
            next_stop_s = min([t for t in asha_rungs_s if t > train_s] + [BUDGET_S])
            if train_s <= next_stop_s - 2 * RUNG_S:
                return number
    return None


def test_worker_node_killed_mid_trial_resumes_elsewhere(tmp_path, tiny_corpus, cluster):
    session_dir = cluster.head_node.get_session_dir_path()
    storage = tmp_path / "runs"
    space = write_space(tmp_path)
    driver = [sys.executable, str(REPO / "tests" / "search_fixtures.py"), "run", "--space", str(space),
              "--name", NAME, "--storage", str(storage), "--trials", str(TRIALS), "--gpus-per-trial", "0",
              "--max-concurrent", "2", "--budget-s", str(BUDGET_S), "--grace-s", str(RUNG_S), "--report-every-s", str(RUNG_S),
              "--reduction-factor", str(REDUCTION), "--seed", "0", "--max-failures", "2",
              "--ray-address", cluster.address,
              "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"])]
    db = storage / NAME / store.STUDY_FILE
    workers = [cluster.add_node(num_cpus=1)]
    start = time.perf_counter()
    log = open(tmp_path / "driver.log", "w")
    # Its own process group, so a failing test can kill the driver and anything it spawned in one go.
    proc = subprocess.Popen(driver, cwd=REPO, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def driver_log() -> str:
        return (tmp_path / "driver.log").read_text()[-4000:]

    def wait_for(what: str, ready) -> None:
        deadline = time.time() + WAIT_S
        while not ready():
            assert proc.poll() is None, f"driver exited while waiting for {what}:\n" + driver_log()
            assert time.time() < deadline, f"timed out waiting for {what}:\n" + driver_log()
            time.sleep(0.1)

    try:
        # The second worker joins once the first trial (the leader) has its trainer running on the first, so the
        # leader reaches every ASHA rung first and is never stopped (the first result at a rung sets the cutoff):
        # the second trial still has its worker process to start. It is then stopped at 1, 4 or 16 s while the
        # leader trains on, or runs on until the leader completes: either way one trial finishes while another
        # still has reports ahead. (Joining only after the leader's first report left too little of the leader's
        # run on a busy CPU: a trial's worker took 75 s to start, and the second one started as the leader ended.)
        wait_for("the first trial's trainer to start", lambda: any((storage / NAME).glob("t*/run/train.log")))
        workers.append(cluster.add_node(num_cpus=1))
        by_id = {w.node_id: w for w in workers}

        # Kill moment: a launched trial has finished (so there is something that must not be lost) and another
        # is running with a registered checkpoint and training ahead of it.
        victim = None

        asha_rungs_s = store.load_settings(NAME, str(storage)).asha_milestones_s  # saved before the first trial

        def ready() -> bool:
            nonlocal victim
            states = _study_states(db)
            victim = _victim(states, _results(session_dir), asha_rungs_s)
            return victim is not None and any(s in FINISHED for s in states.values())

        wait_for("a finished trial and a running one with a checkpoint", ready)
        victim_node = _results(session_dir)[victim][-1][NODE_KEY]
        assert victim_node in by_id, "trials must run on the worker nodes, never the CPU-less head"
        settings = store.load_settings(NAME, str(storage))
        before = {t.number: (t.state, t.values, dict(t.intermediate_values))
                  for t in load_study(settings).get_trials(deepcopy=False)
                  if t.user_attrs.get("tune_trial_id") and t.state.is_finished()}
        assert before
        # A hard node failure: SIGKILL to the node's processes. The trial's worker first: killed with the raylet
        # only, it outlived it by seconds, reached its next ASHA rung and was stopped there, never retried.
        os.kill(_results(session_dir)[victim][-1]["pid"], signal.SIGKILL)
        cluster.remove_node(by_id[victim_node], allow_graceful=False)
        killed_s = time.perf_counter() - start
        survivor = next(n for n in by_id if n != victim_node)
        proc.wait(timeout=FINISH_S)
        assert proc.returncode == 0, driver_log()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    seconds = time.perf_counter() - start

    results = _results(session_dir)
    # The search really ran across both worker nodes.
    assert {r[NODE_KEY] for rows in results.values() for r in rows} == set(by_id)

    # The victim: its results on the killed node, then on the survivor, and never back.
    rows = results[victim]
    on_victim = [r for r in rows if r[NODE_KEY] == victim_node]
    after = [r for r in rows if r[NODE_KEY] != victim_node]
    assert after, f"trial {victim} was not retried after its node died:\n" + driver_log()
    assert rows == on_victim + after and all(r[NODE_KEY] == survivor for r in after)
    # Tune saw the node loss as the trial's one failure and retried it.
    folder = _trial_dir(storage, victim)
    assert "Failure # 1" in (folder / "error.txt").read_text()
    assert not any((_trial_dir(storage, n) / "error.txt").exists() for n in results if n != victim)
    # It resumed from a checkpoint rather than from scratch. Tune resumes from the last checkpoint it had
    # registered: that of the last result on the dead node, or of the one before when the node died between a
    # result and Tune's save call that registers its checkpoint, or of one result further when the node died after
    # the driver registered that result's checkpoint but before it logged the result to result.json (seen in about
    # one run in four: checkpoint_000006 loaded, rows logged up to iteration 6). The trainer logs which one it
    # loaded, with its step and train_s; checkpoint_K belongs to training_iteration K + 1. Its first report on the
    # new node is the next rung after that checkpoint's train_s (a fresh start would report again at ~RUNG_S),
    # and Tune's iteration count goes on from that result.
    log_text = (folder / "run" / "train.log").read_text()
    resumes = re.findall(r"resumed from (\S+) at step (\d+), train_s ([0-9.]+)", log_text)
    assert len(resumes) == 1, log_text[-3000:]
    path, step, train_s = resumes[0]
    assert Path(path).parent == folder and re.fullmatch(r"checkpoint_\d+", Path(path).name), path
    checkpoint = {"step": int(step), "train_s": float(train_s),
                  "training_iteration": int(Path(path).name.split("_")[1]) + 1}
    last_logged = on_victim[-1]["training_iteration"]
    assert last_logged - 1 <= checkpoint["training_iteration"] <= last_logged + 1, (checkpoint, on_victim[-2:])
    logged = [r for r in on_victim if r["training_iteration"] == checkpoint["training_iteration"]]
    assert all(r["step"] == checkpoint["step"] for r in logged), (checkpoint, logged)
    if logged:  # its result's exact train_s; the log has it to 0.1 s only
        checkpoint["train_s"] = logged[0]["train_s"]
    else:
        checkpoint["train_s"] -= 0.05
    first = after[0]
    boundary = (math.floor(checkpoint["train_s"] / RUNG_S) + 1) * RUNG_S
    assert first.get("train_s", first.get("final_train_s")) >= boundary, (checkpoint, first)
    assert first["training_iteration"] == checkpoint["training_iteration"] + 1
    assert all(r["step"] > checkpoint["step"] for r in after if "step" in r)

    # The search finished: every trial launched ran to an outcome (the retry spared the victim a FAIL), and each
    # trial finished before the kill is in the study and the report, unchanged.
    study = load_study(settings)
    launched = {t.number: t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("tune_trial_id")}
    assert len(launched) == TRIALS
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in launched.values()), \
        [(t.number, t.state.name, t.user_attrs.get("reason")) for t in launched.values()]
    for number, (state, values, intermediate) in before.items():
        t = launched[number]
        assert (t.state, t.values, dict(t.intermediate_values)) == (state, values, intermediate)
    table = trials_table(study).set_index("number")
    for number, (state, _, _) in before.items():
        assert table.loc[number, "optuna_state"] == state.name
    assert (storage / NAME / "report" / "report.md").is_file()
    print(f"\nmulti-node search: killed the node of trial {victim} at {killed_s:.1f}s; it resumed on the other node "
          f"from step {checkpoint['step']} (train_s {checkpoint['train_s']:.2f}, "
          f"{'latest' if checkpoint is on_victim[-1] else 'previous'} checkpoint); "
          f"{len(before)} trial(s) finished before the kill kept; whole search {seconds:.1f}s")
