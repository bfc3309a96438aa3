"""Trials that share one device take turns at its timed work: a lease per device, held from the end of a trial's
compile to the end of its run.

With --trials-per-gpu N, Ray places N trials on each GPU. Each starts up and compiles at once (CPU work, minutes
for a new shape), then waits here for the device; the holder trains and evaluates alone, so a trial's time budget
buys the same steps as on a GPU of its own, and the next trial is compiled by the time the GPU frees up.

The lease is an exclusive flock on a per-device file in the machine's temp folder: every process on the machine
(any search, any Ray node started on it) sees the same lock, and the kernel drops it when its holder dies.
"""
from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from trainer.hooks import StopRequested

LEASE_FOLDER = Path(tempfile.gettempdir()) / "recurrence_search_leases"


def device_key(gpu_ids: list | None = None) -> str:
    """'host/gpu0' for a trial placed on GPU 0 of this machine, 'host/cpu' for a CPU trial."""
    if gpu_ids is None:
        import ray

        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    device = "gpu" + "+".join(str(g) for g in sorted(gpu_ids, key=str)) if gpu_ids else "cpu"
    return f"{socket.gethostname()}/{device}"


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
