"""A run's progress: timed start-up phases and the log lines of train.log."""
from __future__ import annotations

import time
from pathlib import Path


class PhaseTimer:
    """Seconds per named phase, each measured from the end of the one before (or from the start)."""

    def __init__(self, start: float):
        self.last, self.phases_s = start, {}

    def done(self, name: str) -> None:
        """Close the phase `name` now."""
        now = time.perf_counter()
        self.phases_s[name] = now - self.last
        self.last = now

    def total_s(self) -> float:
        """Seconds of all phases closed so far."""
        return sum(self.phases_s.values())

    def line(self, title: str) -> str:
        """'title 9.1 s: a 0.4, b 0.1, ...' for the log."""
        parts = ", ".join(f"{name} {s:.2f}" for name, s in self.phases_s.items())
        return f"{title} {self.total_s():.2f} s: {parts}"


class RunLog:
    """Progress lines to the terminal and to out_dir/train.log (main rank only)."""

    def __init__(self, path: Path, enabled: bool, echo: bool = True):
        self.path, self.enabled, self.echo = path, enabled, echo
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.perf_counter() - self.start:8.1f}s] {message}"
        if self.echo:
            print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")
