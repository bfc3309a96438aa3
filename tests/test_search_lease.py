"""The device lease (trials sharing a GPU take turns) and the device-use accounting built on its timeline."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from search.analysis import device_use
from search.tune.lease import DeviceLease, device_key
from search.settings import SettingsError
from trainer.hooks import StopRequested

REPO = Path(__file__).resolve().parent.parent


def holder(folder: Path, key: str, hold_s: float, marker: Path, release: bool = True,
           after: tuple[Path, str] | None = None) -> subprocess.Popen:
    """Another process that takes the lease, writes marker with the time it got it, holds it, then ends; with
    after=(file, text) it holds for hold_s from when that text shows in that file (at most 300 s), not from the start."""
    wait_for = (str(after[0]), after[1]) if after else None
    code = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from search.tune.lease import DeviceLease
        lease = DeviceLease({key!r}, folder={str(folder)!r})
        lease.acquire()
        open({str(marker)!r}, "w").write(repr(time.time()))
        wait_for, deadline = {wait_for!r}, time.time() + 300
        while wait_for and time.time() < deadline and not (
                os.path.exists(wait_for[0]) and wait_for[1] in open(wait_for[0]).read()):
            time.sleep(0.05)
        time.sleep({hold_s})
        if {release}:
            lease.release()
            open({str(marker)!r} + ".released", "w").write(repr(time.time()))
        else:
            os.kill(os.getpid(), 9)  # die holding it
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the holder process never took the lease"
        time.sleep(0.01)
    return proc


def test_a_second_process_waits_until_the_holder_releases(tmp_path):
    proc = holder(tmp_path / "locks", "host/gpu0", 0.8, tmp_path / "got")
    lease = DeviceLease("host/gpu0", folder=tmp_path / "locks")
    waited = lease.acquire()
    got_at = time.time()
    proc.wait(timeout=30)
    released_at = float((tmp_path / "got.released").read_text())
    assert lease.held and waited > 0.3 and got_at >= released_at
    lease.release()
    assert not lease.held
    # Other devices are other locks: no wait.
    other = DeviceLease("host/gpu1", folder=tmp_path / "locks")
    assert other.acquire() < 0.2
    other.release()


def test_a_holder_that_dies_frees_the_device(tmp_path):
    proc = holder(tmp_path / "locks", "host/gpu0", 0.2, tmp_path / "got", release=False)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    lease = DeviceLease("host/gpu0", folder=tmp_path / "locks")
    assert lease.acquire() < 0.5
    lease.release()


def test_a_waiting_trial_that_is_stopped_gives_up_without_the_lease(tmp_path):
    proc = holder(tmp_path / "locks", "host/cpu", 5.0, tmp_path / "got")
    lease = DeviceLease("host/cpu", folder=tmp_path / "locks")
    asked = []
    with pytest.raises(StopRequested, match="waiting for host/cpu"):
        lease.acquire(should_stop=lambda: asked.append(1) or len(asked) >= 3)
    assert not lease.held and len(asked) == 3
    proc.kill()
    proc.wait(timeout=30)


def test_device_keys_name_the_machine_and_the_gpu():
    assert device_key([3]).endswith("/gpu3") and device_key([]).endswith("/cpu")
    assert device_key([0]) != device_key([1])


def test_union_counts_overlapping_time_once():
    assert device_use.union_s([]) == 0
    assert device_use.union_s([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert device_use.union_s([(20, 25), (0, 10)]) == 15


def test_device_use_per_device_and_total():
    entries = [  # two trials on gpu0 that overlap (one compiled while the other trained), one on gpu1
        {"device": "h/gpu0", "started_at": 0, "acquired_at": 15, "released_at": 100, "train_s": 80, "wait_s": 0},
        {"device": "h/gpu0", "started_at": 30, "acquired_at": 100, "released_at": 200, "train_s": 90, "wait_s": 70},
        {"device": "h/gpu1", "started_at": 0, "acquired_at": 5, "released_at": 50, "train_s": 25, "wait_s": 0},
    ]
    rows = device_use.device_use(entries)
    assert [r["device"] for r in rows] == ["h/gpu0", "h/gpu1"]
    gpu0 = rows[0]
    assert gpu0["in_use_s"] == 200 and gpu0["train_s"] == 170 and gpu0["wait_s"] == 70
    assert gpu0["outside_training_pct"] == pytest.approx(15.0)
    total = device_use.totals(rows)
    assert total["devices"] == 2 and total["trials"] == 3
    assert total["outside_training_pct"] == pytest.approx(100 * (1 - 195 / 250))
    # Before gpu0 first trained (at 15) only its first trial was starting up; the second trial's start-up
    # (30-100) overlapped training and stays in the share.
    assert gpu0["before_first_training_s"] == 15 and rows[1]["before_first_training_s"] == 5
    assert gpu0["outside_training_after_first_pct"] == pytest.approx(100 * (1 - 170 / 185))
    assert total["before_first_training_s"] == 20
    assert total["outside_training_after_first_pct"] == pytest.approx(100 * (1 - 195 / 230))
    assert device_use.totals([]) is None


def test_time_before_first_training_counts_trials_that_started_together_once():
    # Two trials started up and compiled at once (--trials-per-gpu 2); a third joined later.
    trials = [{"started_at": 0, "acquired_at": 56, "released_at": 250},
              {"started_at": 1, "acquired_at": 250, "released_at": 380},
              {"started_at": 250, "acquired_at": 380, "released_at": 500}]
    assert device_use.before_first_training_s(trials) == 56


def test_entries_are_written_and_read_back_and_broken_ones_left_out(tmp_path):
    fields = {"device": "h/gpu0", "started_at": 1.0, "acquired_at": 2.0, "released_at": 5.0, "train_s": 2.5,
              "wait_s": 0.5}
    device_use.write_entry(tmp_path / "t0000_a" / "run", **fields, worker_trial=1)
    (tmp_path / "t0001_b" / "run").mkdir(parents=True)
    (tmp_path / "t0001_b" / "run" / device_use.FILE).write_text("{not json")
    (tmp_path / "t0002_c" / "run").mkdir(parents=True)
    (tmp_path / "t0002_c" / "run" / device_use.FILE).write_text(json.dumps({"device": "h/gpu0"}))
    (entry,) = device_use.read_entries(tmp_path)
    assert {k: entry[k] for k in fields} == fields and entry["worker_trial"] == 1
    with pytest.raises(ValueError, match="lacks"):
        device_use.write_entry(tmp_path / "x", device="h/gpu0")


def test_trials_per_gpu_needs_whole_single_gpu_trials(tmp_path):
    from tests.search_fixtures import tiny_settings

    corpus = {"data": tmp_path, "tokenizer": tmp_path / "tok.model"}
    ok = tiny_settings(tmp_path, corpus, tmp_path / "s.yaml", "ok", gpus_per_trial=1.0, trials_per_gpu=3)
    assert ok.gpu_share == pytest.approx(1 / 3)
    for gpus in (0.5, 2.0):
        with pytest.raises(SettingsError, match="--trials-per-gpu.*--gpus-per-trial 1"):
            tiny_settings(tmp_path, corpus, tmp_path / "s.yaml", "bad", gpus_per_trial=gpus, trials_per_gpu=2)
    with pytest.raises(SettingsError, match="--trials-per-gpu: must be at least 1"):
        tiny_settings(tmp_path, corpus, tmp_path / "s.yaml", "bad", trials_per_gpu=0)
