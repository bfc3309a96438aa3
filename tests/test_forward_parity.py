"""benchmarks/forward_parity.py: bad input gets one line; given the record script, the two models agree."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "forward_parity.py"
RECORD = REPO.parent / "shared" / "anchors" / "record_0331_mini_recurrence" / "train_gpt.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_a_missing_reference_is_one_line_and_exit_2(tmp_path):
    done = run("--reference", str(tmp_path / "nope.py"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "is not a file" in done.stderr


def test_a_sequence_past_the_records_rotary_length_is_refused(tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text("")
    done = run("--reference", str(script), "--seq-len", "2048")
    assert done.returncode == 2 and "--seq-len 2048" in done.stderr


@pytest.mark.skipif(not RECORD.is_file(), reason="the record script is not in ../shared here")
def test_our_model_computes_the_records_forward_with_recurrence_off_and_on(tmp_path):
    out = tmp_path / "parity.json"
    done = run("--reference", str(RECORD), "--seq-len", "64", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert [r["layers"] for r in rows] == [11, 13]
    assert all(abs(r["loss_diff"]) < 1e-4 and r["max_logit_diff"] < 1e-3 for r in rows)
