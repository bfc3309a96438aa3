"""What a search does when things go wrong: a worker killed for memory is a failed trial with that reason (never a
dead driver), a search where no trial completed exits non-zero, a driver that died leaves no trial "running" for
good, and enqueued presets that --trials leaves out are named."""
from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from optuna.trial import TrialState

from search import store
from search.analysis.report import load_study
from search.tune import driver
from tests.search_fixtures import cli_env, run_local_search, tiny_settings, write_space

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30


# ---- train_fn stand-ins that lose their worker (settings.train_fn: "module:function") ------------------------

def allocate_until_killed(cfg, data_dir, tokenizer_path, out_dir, report=None, resume_from=None):
    """Take memory 256 MB at a time (touched, so it is resident) until Ray's memory monitor kills this worker."""
    held = []
    for _ in range(48):  # 12 GB: far past the threshold the test sets
        held.append(bytearray(b"\x01") * (256 << 20))
        time.sleep(0.2)
    raise AssertionError("the memory monitor never killed this worker")


def die_by_sigkill(cfg, data_dir, tokenizer_path, out_dir, report=None, resume_from=None):
    """Vanish as a process does when the kernel's OOM killer picks it."""
    os.kill(os.getpid(), signal.SIGKILL)


def _used_fraction() -> tuple[float, float]:
    """(used bytes, total bytes) of this machine as Ray's memory monitor reads them (total - available)."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]


def _finish_output(settings) -> tuple[int, str, str]:
    from search.cli import _finish

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = _finish(settings)
    return code, out.getvalue(), err.getvalue()


def test_a_trial_killed_by_rays_memory_monitor_fails_with_that_reason(tmp_path, tiny_corpus, monkeypatch):
    used, total = _used_fraction()
    # Ray kills workers once the machine uses this share of its memory: 1.5 GB above what is in use now.
    monkeypatch.setenv("RAY_memory_usage_threshold", f"{min(0.95, (used + 1.5 * GIB) / total):.3f}")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    settings = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "oom", trials=1,
                             max_concurrent=1, max_failures=0,
                             train_fn="tests.test_search_failures:allocate_until_killed")
    run_local_search(settings)  # returns: Tune's "Caught unexpected exception" used to end the driver here
    (trial,) = [t for t in load_study(settings).get_trials() if t.user_attrs.get("tune_trial_id")]
    assert trial.state == TrialState.FAIL and trial.user_attrs["status"] == "failed"
    reason = trial.user_attrs["reason"]
    assert reason.startswith("out of memory: the worker was killed by Ray's memory monitor"), reason
    assert "--smoke" in reason and "--max-concurrent" in reason
    code, out, err = _finish_output(settings)
    assert code == 1 and err.startswith("error: search oom: no trial completed; failures: out of memory")


def test_a_trial_whose_worker_vanished_fails_naming_the_oom_killer(tmp_path, tiny_corpus):
    settings = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "sigkill", trials=2,
                             max_concurrent=1, max_failures=0, train_fn="tests.test_search_failures:die_by_sigkill")
    run_local_search(settings)
    failed = [t for t in load_study(settings).get_trials() if t.user_attrs.get("tune_trial_id")]
    assert len(failed) == 2 and all(t.state == TrialState.FAIL for t in failed)
    for t in failed:
        assert t.user_attrs["reason"].startswith("worker killed: its process died without an error")
        assert "OOM killer" in t.user_attrs["reason"]
    code, _, err = _finish_output(settings)
    assert code == 1 and "no trial completed" in err and err.count("\n") == 1


def test_a_search_that_completes_nothing_exits_non_zero(tmp_path, tiny_corpus):
    # Learning rates that make the loss overflow: every trial diverges.
    cmd = [sys.executable, str(REPO / "tests" / "search_fixtures.py"), "run", "--space", str(write_space(tmp_path)),
           "--name", "diverge", "--storage", str(tmp_path / "runs"), "--trials", "2", "--budget-s", "2",
           "--ray-address", "local", "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"]),
           "--set", "train.matrix_lr=1e12", "--set", "train.embed_lr=1e12", "--set", "train.scalar_lr=1e12"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: search diverge: no trial completed; failures: diverged")
    assert "[search] report:" in proc.stdout  # the report is still written: nothing computed is lost


def _launched_running(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(
                "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE a.key = 'tune_trial_id' AND t.state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_status_after_the_driver_died_marks_its_trials_interrupted_and_resume_finishes(tmp_path, tiny_corpus):
    storage, name = tmp_path / "runs", "orphans"
    run = [sys.executable, str(REPO / "tests" / "search_fixtures.py"), "run", "--space", str(write_space(tmp_path)),
           "--name", name, "--storage", str(storage), "--trials", "2", "--budget-s", "3", "--max-concurrent", "2",
           "--ray-address", "local", "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"])]
    proc = subprocess.Popen(run, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while _launched_running(storage / name / store.STUDY_FILE) < 1:
            assert proc.poll() is None and time.time() < deadline, "no trial was launched"
            time.sleep(0.2)
        record = driver.read_record(store.load_settings(name, str(storage)))
        assert record["pid"] == proc.pid and not record.get("ended_at")
        # While the driver lives, status leaves its trials alone.
        alive = subprocess.run([sys.executable, "-m", "search", "status", name, "--storage", str(storage)],
                               cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
        assert alive.returncode == 0 and "marked interrupted" not in alive.stdout
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray, as the kernel's OOM killer would
        proc.wait()
    status = subprocess.run([sys.executable, "-m", "search", "status", name, "--storage", str(storage)],
                            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"its driver (pid {proc.pid} on" in status.stdout and "died without closing the search" in status.stdout
    assert "are marked interrupted" in status.stdout and " 0 running;" in status.stdout, status.stdout
    settings = store.load_settings(name, str(storage))
    interrupted = [t for t in load_study(settings).get_trials() if t.user_attrs.get("status") == "interrupted"]
    assert interrupted and all("resume" in t.user_attrs["reason"] for t in interrupted)
    again = subprocess.run([sys.executable, "-m", "search", "status", name, "--storage", str(storage)],
                           cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert "marked interrupted" not in again.stdout  # said once
    resume = subprocess.run([sys.executable, str(REPO / "tests" / "search_fixtures.py"), "resume", name,
                             "--from-study", "--storage", str(storage)],
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    finished = load_study(settings).get_trials()
    assert not [t for t in finished if t.state == TrialState.RUNNING]
    assert driver.read_record(settings).get("ended_at")


def test_gone_reason_reads_pid_and_heartbeat():
    import socket

    here = socket.gethostname()
    now = time.time()
    assert driver.gone_reason(None) is None
    assert driver.gone_reason({"host": here, "pid": os.getpid(), "heartbeat_at": now}) is None
    assert driver.gone_reason({"host": here, "pid": os.getpid(), "heartbeat_at": now, "ended_at": now}) is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert "died without closing" in driver.gone_reason({"host": here, "pid": int(dead.stdout), "heartbeat_at": now})
    other_host = {"host": "elsewhere", "pid": 1, "heartbeat_at": now - driver.STALE_S - 5}
    assert "stopped answering" in driver.gone_reason(other_host, now=now)
    assert driver.gone_reason({**other_host, "heartbeat_at": now - 5}, now=now) is None


def test_presets_beyond_trials_are_named_before_the_search_starts(tmp_path, capsys):
    from search.cli import DEFAULT_SPACE, _with_enqueued
    from search.settings import SearchSettings

    settings = SearchSettings(name="p", space=DEFAULT_SPACE, storage=str(tmp_path), data_dir=str(tmp_path),
                              tokenizer=str(tmp_path / "t.model"), trials=2).validate()
    settings, points = _with_enqueued(settings, [], presets=True)
    out = capsys.readouterr().out
    assert len(points) > 2
    left = [Path(p).stem for p, _ in points[2:]]
    assert f"--trials 2 launches only the first 2 of the {len(points)} enqueued configs; not run: " \
           f"{', '.join(left)} (pass --trials {len(points)} or more" in out
