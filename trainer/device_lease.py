"""Runs that share one device take turns at its timed work: a lease per device, held from the end of a run's
compile to the end of its last evaluation (writing the artifact is CPU work and goes on after).

Search trials (--trials-per-gpu N) and `trainer train --share-device` runs on one machine start up and compile at
once, then wait here for the device; the holder trains and evaluates alone, so a time budget buys the same steps
as on a device of its own, and the next run is compiled by the time the device frees up.

The lease is an exclusive flock on a per-device file in the machine's temp folder: every process on the machine
(any search, any Ray node started on it, any trainer) sees the same lock, and the kernel drops it when its holder
dies.
"""
from __future__ import annotations

import fcntl
import gc
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from trainer.hooks import Hooks, SaveCheckpoint, StepLog, StopRequested

LEASE_FOLDER = Path(tempfile.gettempdir()) / "recurrence_search_leases"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether exc says the GPU is full: the caching allocator's error, or the driver's (a kernel launch)."""
    # A compiled kernel's launch that finds no memory raises a plain RuntimeError from the driver; the
    # allocator's cap (set_per_process_memory_fraction) does not cover the driver's own allocations.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "CUDA driver error: out of memory" in str(exc))


def local_device_key(device: torch.device) -> str:
    """'host/gpu0' for CUDA device 0 of this machine (its physical index under CUDA_VISIBLE_DEVICES, as a search
    trial's key names it), 'host/cpu' for the CPU."""
    if device.type != "cuda":
        return f"{socket.gethostname()}/cpu"
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return f"{socket.gethostname()}/gpu{visible[index] if index < len(visible) else index}"


class DeviceLease:
    """An exclusive, machine-wide lease on one device (see the module docstring)."""

    def __init__(self, key: str, folder: Path = LEASE_FOLDER):
        self.key = key
        self.path = Path(folder) / (re.sub(r"[^A-Za-z0-9_.+-]", "_", key) + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, should_stop: Callable[[], bool] | None = None, poll_s: float = 0.05) -> float:
        """Block until this process holds the lease; return the seconds waited. Raises StopRequested if
        should_stop() turns true first (Tune ended the trial while it waited)."""
        if self._fd is not None:
            return 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        start = time.perf_counter()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if should_stop is not None and should_stop():
                    os.close(fd)
                    raise StopRequested(f"stopped while waiting for {self.key}") from None
                time.sleep(poll_s)
        self._fd = fd
        return time.perf_counter() - start

    def release(self) -> None:
        """Give the device to the next waiting trial (a no-op when not held)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def warm_up_again(error: BaseException, log: Callable[[str], None], beside: str) -> bool:
    """Whether a warm-up that raised error beside the `beside` holding the device ran out of its memory (then it
    warms up again in its own turn); logged when so."""
    if not is_out_of_memory(error):
        return False
    log(f"warm-up ran out of GPU memory beside another {beside}; warming up again once it holds the device")
    return True


def take_turn(lease: DeviceLease, should_stop: Callable[[], bool] | None = None) -> float:
    """Wait for the lease, the warm-up's cached GPU memory left to the holder meanwhile; once held, the run may use
    all of the GPU's memory. Returns the seconds waited (StopRequested as DeviceLease.acquire)."""
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.empty_cache()
    waited_s = lease.acquire(should_stop=should_stop)
    if gpu:
        torch.cuda.set_per_process_memory_fraction(1.0)
    return waited_s


def hand_on(lease: DeviceLease) -> bool:
    """Release a held lease, and the GPU memory the caching allocator holds with it; False when it was not held."""
    if not lease.held:
        return False
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
    lease.release()
    return True


class TakingTurns(Hooks):
    """Another run's hooks, plus a turn on a shared device: ready() waits for the lease, done_with_device()
    hands it on (and the memory the caching allocator holds). Until its turn a run on a GPU may use
    `waiting_memory_fraction` of the GPU's memory, so the run that holds it keeps the rest; a warm-up that
    does not fit there waits for the turn and warms up again."""

    def __init__(self, inner: Hooks, lease: DeviceLease, waiting_memory_fraction: float = 0.5):
        self.inner, self.lease = inner, lease
        self.waiting_memory_fraction = waiting_memory_fraction
        self.trainer = None

    def attach(self, trainer) -> None:
        self.trainer = trainer
        self.inner.attach(trainer)
        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(self.waiting_memory_fraction)

    def warm_up_failed(self, error: BaseException) -> bool:
        """A warm-up beside the run that holds the device may not fit: warm up again once this run holds it."""
        return self.inner.warm_up_failed(error) or warm_up_again(error, self.trainer.log, "run")

    def ready(self) -> None:
        self.inner.ready()
        waited_s = take_turn(self.lease)
        self.trainer.log(f"waited {waited_s:.1f}s for the device ({self.lease.key})")

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    def next_report_s(self, train_s: float) -> float | None:
        return self.inner.next_report_s(train_s)

    def report(self, metrics: dict, save_checkpoint: SaveCheckpoint) -> None:
        self.inner.report(metrics, save_checkpoint)

    def on_log(self, step: StepLog) -> None:
        self.inner.on_log(step)

    def done_with_device(self) -> None:
        self.inner.done_with_device()
        if hand_on(self.lease):
            self.trainer.log(f"handed the device on ({self.lease.key})")
