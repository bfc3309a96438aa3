"""Where a trial's wall time went: training, trainer start-up, compilation, evaluation, export, and the rest (Ray)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

# wait_s: waiting for a GPU shared with other trials (--trials-per-gpu), time the GPU spent training another trial.
PARTS = ("train_s", "startup_s", "compile_s", "wait_s", "eval_s", "export_s")
COLUMNS = ("wall_s", *PARTS, "other_s", "overhead_pct")


def _num(v) -> float | None:
    """A finite float, or None for missing/NaN values."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def breakdown(
    train_s: float | None,
    compile_s: float | None = None,
    eval_s: float | None = None,
    export_s: float | None = None,
    trainer_wall_s: float | None = None,
    tune_wall_s: float | None = None,
    startup_s: float | None = None,
    wait_s: float | None = None,
) -> dict[str, float | None]:
    """One trial's seconds per part, other_s = wall - known parts, overhead_pct = non-training % of wall.

    wall_s is the longer of Tune's time for the trial (from the start of the trial function) and the trainer's own
    wall_s (the only one before Tune reports). Unknown parts (None) count in other_s, e.g.
    startup_s of trials recorded before the trainer measured it.
    """
    parts = {"train_s": _num(train_s), "startup_s": _num(startup_s), "compile_s": _num(compile_s),
             "wait_s": _num(wait_s), "eval_s": _num(eval_s), "export_s": _num(export_s)}
    walls = [w for w in (_num(trainer_wall_s), _num(tune_wall_s)) if w is not None]
    wall = max(walls) if walls else None
    out: dict[str, float | None] = {"wall_s": wall, **parts, "other_s": None, "overhead_pct": None}
    if wall is None:
        return out
    known = sum(v for v in parts.values() if v is not None)
    wall = max(wall, known)  # never report a negative remainder (clocks of two processes)
    out["wall_s"] = wall
    out["other_s"] = wall - known
    if wall > 0:
        out["overhead_pct"] = 100.0 * (wall - (parts["train_s"] or 0.0)) / wall
    return out


def totals(rows: Iterable[Mapping[str, float | None]]) -> dict[str, float | int | None]:
    """Summed seconds over trials with a known wall time, and the overall non-training share (%)."""
    timed = [r for r in rows if _num(r.get("wall_s")) is not None]
    out: dict[str, float | int | None] = {"trials": len(timed)}
    for key in ("wall_s", *PARTS, "other_s"):
        out[key] = sum(_num(r.get(key)) or 0.0 for r in timed)
    wall = out["wall_s"]
    out["overhead_pct"] = 100.0 * (wall - out["train_s"]) / wall if wall else None
    return out
