"""`trainer train --share-device`: a run waits for the device while another process holds it, trains alone, and
hands the device on once its evaluations are over."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_search_lease import holder
from trainer.device_lease import DeviceLease, local_device_key

REPO = Path(__file__).resolve().parent.parent


def test_a_device_key_names_the_physical_gpu_as_a_search_trial_does(monkeypatch):
    host = socket.gethostname()
    assert local_device_key(torch.device("cpu")) == f"{host}/cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local_device_key(torch.device("cuda", 1)) == f"{host}/gpu5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local_device_key(torch.device("cuda", 2)) == f"{host}/gpu2"


def test_a_shared_device_run_waits_for_the_holder_and_hands_the_device_on(tmp_path, tiny_corpus):
    temp = tmp_path / "tmp"
    temp.mkdir()
    folder = temp / "recurrence_search_leases"  # where the trainer looks, with TMPDIR=temp
    key = f"{socket.gethostname()}/cpu"
    # Another run holds the CPU until 3 s after this one has started up (a slow machine's start-up can take longer
    # than any fixed hold).
    other = holder(folder, key, 3.0, tmp_path / "held", after=(tmp_path / "run" / "train.log", "] startup "))
    run = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--smoke", "--share-device", "--data", str(tiny_corpus["data"]),
         "--tokenizer", str(tiny_corpus["tokenizer"]), "--out", str(tmp_path / "run")],
        env={**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True,
        timeout=600)
    other.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    released_at = float((tmp_path / "held.released").read_text())
    log = (tmp_path / "run" / "train.log").read_text()
    waited = float(re.search(rf"waited ([\d.]+)s for the device \({re.escape(key)}\)", log).group(1))
    assert waited > 0.5, log  # it could not train while the holder had the device
    lines = log.splitlines()
    handed = next(i for i, line in enumerate(lines) if "handed the device on" in line)
    assert any("val_bpb_prequant" in line for line in lines[:handed])  # after its evaluations
    lease = DeviceLease(key, folder=folder)
    assert lease.acquire() < 0.5 and time.time() > released_at  # and the lease is free once it ended
    lease.release()


def test_share_device_is_refused_under_torchrun(tmp_path, tiny_corpus):
    run = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--smoke", "--share-device", "--out", str(tmp_path / "run")],
        env={**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: --share-device takes turns on one device: leave it out of torchrun runs")


@pytest.mark.parametrize("holds", [True, False])
def test_taking_turns_hands_on_only_a_held_lease(tmp_path, holds):
    from trainer.device_lease import TakingTurns
    from trainer.hooks import NoHooks

    logged = []
    lease = DeviceLease("host/gpu0", folder=tmp_path)
    turns = TakingTurns(NoHooks(), lease)
    turns.attach(type("T", (), {"log": staticmethod(logged.append)})())
    if holds:
        turns.ready()
    turns.done_with_device()
    assert not lease.held and any("handed the device on" in m for m in logged) == holds


def test_a_warm_up_out_of_memory_beside_the_holder_waits_for_the_turn(tmp_path):
    from trainer.device_lease import TakingTurns
    from trainer.hooks import NoHooks

    logged = []
    turns = TakingTurns(NoHooks(), DeviceLease("host/gpu0", folder=tmp_path))
    turns.attach(type("T", (), {"log": staticmethod(logged.append)})())
    assert turns.warm_up_failed(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "warming up again once it holds the device" in logged[-1]
    assert not turns.warm_up_failed(RuntimeError("CUDA error: an illegal memory access was encountered"))
