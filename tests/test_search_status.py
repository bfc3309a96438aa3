"""Status figures that concurrent CPU trials used to get wrong, and `spaces show`/`check` progress."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from search.analysis import device_use
from tests.search_fixtures import write_space

REPO = Path(__file__).resolve().parents[1]


def test_cpu_trials_side_by_side_never_give_a_negative_outside_training_share():
    # Two CPU trials at once on one machine (--max-concurrent 2), each training 80 of its 100 s.
    entries = [{"device": "h/cpu", "started_at": 0, "acquired_at": 10, "released_at": 100, "train_s": 80,
                "wait_s": 0, "trials_per_gpu": 1},
               {"device": "h/cpu", "started_at": 5, "acquired_at": 15, "released_at": 105, "train_s": 80,
                "wait_s": 0, "trials_per_gpu": 1}]
    (row,) = device_use.device_use(entries)
    # Each trial held its own cores: 200 trial-seconds in use, 160 training. The union (105 s) counted the
    # concurrent training twice against it: 1 - 160/105 = -52%.
    assert row["in_use_s"] == 200 and row["outside_training_pct"] == pytest.approx(20.0)
    assert row["before_first_training_s"] == 10 + 5
    total = device_use.totals([row])
    assert total["outside_training_pct"] == pytest.approx(20.0) and total["outside_training_after_first_pct"] >= 0
    # Trials that took turns on one GPU (--trials-per-gpu 2) still count the device's time once.
    shared = [{**e, "device": "h/gpu0", "trials_per_gpu": 2} for e in entries]
    assert device_use.device_use(shared)[0]["in_use_s"] == 105


def test_spaces_show_counts_every_point_and_reports_progress_on_stderr(tmp_path):
    from spaces.space import load_space

    space_file = write_space(tmp_path)
    space = load_space(space_file)
    predictions = [space.predict(cfg) for _, cfg in space.configs()]
    proc = subprocess.run([sys.executable, "-m", "spaces", "show", str(space_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fitting = sum(p.fits for p in predictions)
    assert f"size: {len(predictions):,} configs; {fitting:,} predicted to fit" in proc.stdout
    sizes = [p.predicted_artifact_bytes for p in predictions]
    assert f"predicted artifact bytes: {min(sizes):,} .. {max(sizes):,}" in proc.stdout
    assert f"[spaces] {len(predictions):,} configs build" in proc.stderr and "[spaces]" not in proc.stdout
    check = subprocess.run([sys.executable, "-m", "spaces", "check", str(space_file)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and f"OK ({len(predictions):,} configs)" in check.stdout
    assert "[spaces] checking" in check.stderr
