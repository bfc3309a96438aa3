"""How busy a search kept each device: its training seconds against the time its trials occupied it.

A trial's per-part times (search.analysis.overhead) say where its own wall time went; with several trials on one GPU
(--trials-per-gpu) one trial's compile overlaps another's training, so the GPU's share is read from a timeline
instead. Each single-process trial writes run/device_time.json (FILE) with the device, when the trial started,
when it got and released the device, and its training seconds (rewritten at each rung report with
`provisional: true`, so a trial whose process dies keeps its span up to its last report); the device's time in
use is the union of its trials' [started_at, released_at] intervals (a stopped and resumed search's pause is not
counted, and neither is a fresh worker's process start before its trial function runs).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

FILE = "device_time.json"
FIELDS = ("device", "started_at", "acquired_at", "released_at", "train_s", "wait_s")


def union_s(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by the union of [start, end] intervals."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def outside_pct(in_use_s: float, train_s: float) -> float | None:
    """The share of in-use seconds that were not training, in percent (None: nothing in use)."""
    return 100.0 * (1 - train_s / in_use_s) if in_use_s > 0 else None


def occupied_s(intervals: Iterable[tuple[float, float]], take_turns: bool) -> float:
    """Seconds a device was occupied: the union of its trials' intervals when they take turns on it (one trains
    at a time), else their sum: trials that do not take turns each hold their own share of it (CPU trials run
    side by side on their own cores), and a union would count their concurrent training more than once."""
    intervals = list(intervals)
    return union_s(intervals) if take_turns else sum(end - start for start, end in intervals)


def takes_turns(trials: list[Mapping]) -> bool:
    """Whether a device's trials took turns on it (--trials-per-gpu above 1, search.tune.lease); entries written
    before they recorded trials_per_gpu count as taking turns, as they were read then."""
    return not all(t.get("trials_per_gpu") == 1 for t in trials)


def before_first_training_s(trials: list[Mapping]) -> float:
    """Seconds a device was in use before any of its trials first trained: start-up and the first compile."""
    # Nothing can overlap these: no trial is training yet. With several trials per GPU every later compile runs
    # beside a trial in training, so this is the part of the outside share that more trials do not grow.
    first = min(float(t["acquired_at"]) for t in trials)
    return occupied_s(((float(t["started_at"]), min(float(t["released_at"]), first))
                       for t in trials if float(t["started_at"]) < first), takes_turns(trials))


def device_use(entries: Iterable[Mapping]) -> list[dict]:
    """Per device: trials, seconds in use (union of trial intervals), training, lease waits, % outside training."""
    by_device: dict[str, list[Mapping]] = {}
    for e in entries:
        by_device.setdefault(str(e["device"]), []).append(e)
    rows = []
    for device, trials in sorted(by_device.items()):
        in_use_s = occupied_s(((float(t["started_at"]), float(t["released_at"])) for t in trials), takes_turns(trials))
        train_s = sum(float(t["train_s"] or 0.0) for t in trials)
        first_s = before_first_training_s(trials)
        rows.append({
            "device": device, "trials": len(trials), "in_use_s": in_use_s, "train_s": train_s,
            "wait_s": sum(float(t.get("wait_s") or 0.0) for t in trials),
            "outside_training_pct": outside_pct(in_use_s, train_s),
            "before_first_training_s": first_s,
            "outside_training_after_first_pct": outside_pct(in_use_s - first_s, train_s),
        })
    return rows


def totals(rows: list[dict]) -> dict | None:
    """All devices together: in-use and training seconds and the share outside training (None: no timeline)."""
    if not rows:
        return None
    in_use_s, train_s = sum(r["in_use_s"] for r in rows), sum(r["train_s"] for r in rows)
    first_s = sum(r["before_first_training_s"] for r in rows)
    return {"devices": len(rows), "trials": sum(r["trials"] for r in rows), "in_use_s": in_use_s, "train_s": train_s,
            "outside_training_pct": outside_pct(in_use_s, train_s), "before_first_training_s": first_s,
            "outside_training_after_first_pct": outside_pct(in_use_s - first_s, train_s)}


def read_entries(experiment: Path) -> list[dict]:
    """Every trial's device_time.json under a local experiment folder (trial folders hold run/)."""
    entries = []
    for path in sorted(Path(experiment).glob(f"*/run/{FILE}")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a trial killed while writing it: leave it out rather than fail the report
        if all(k in entry for k in FIELDS):
            entries.append(entry)
    return entries


def write_entry(run_dir: Path, **fields) -> None:
    """Write one trial's device_time.json (FIELDS, plus anything else worth keeping)."""
    missing = [k for k in FIELDS if k not in fields]
    if missing:
        raise ValueError(f"device_time entry lacks {missing}")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / FILE).write_text(json.dumps(fields, indent=1, sort_keys=True))
