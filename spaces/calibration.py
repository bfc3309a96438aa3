"""Fit the size model to measured artifacts (run directories) and report its accuracy."""
from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import artifact
from trainer.config import ConfigError, RunConfig, from_dict

from spaces.size_model import FEATURES, Calibration, features, predict_model_bytes

# The margin is this many times the fit's worst leave-one-out under-prediction, so an unseen config
# whose error is somewhat worse than any seen one is still caught; never below MIN_MARGIN_FRACTION.
SAFETY_FACTOR = 1.5
MIN_MARGIN_FRACTION = 0.002


@dataclass(frozen=True)
class MeasuredRun:
    """One run directory: its config, measured compressed model bytes and free-form metrics."""

    name: str
    cfg: RunConfig
    model_bytes: int
    metrics: dict


def read_run(run_dir: Path | str) -> MeasuredRun:
    """Read metrics.json + model.ptz of a run directory, checking that they agree with the config."""
    run_dir = Path(run_dir)
    metrics_path, model_path = run_dir / "metrics.json", run_dir / "model.ptz"
    for path in (metrics_path, model_path):
        if not path.is_file():
            raise ConfigError(f"{run_dir}: missing {path.name}; pass a finished run directory (metrics.json + model.ptz)")
    metrics = json.loads(metrics_path.read_text())
    for key in ("model_bytes", "payload_bytes", "config"):
        if key not in metrics:
            raise ConfigError(f"{metrics_path}: no '{key}' key; this run predates the size report, re-run it")
    cfg = from_dict(metrics["config"], where=f"{metrics_path}:config")
    on_disk = model_path.stat().st_size
    if on_disk != metrics["model_bytes"]:
        raise ConfigError(f"{run_dir}: model.ptz is {on_disk} bytes but metrics.json says {metrics['model_bytes']}; the run is inconsistent, re-export it")
    expected = artifact.payload_bytes(cfg)
    if expected != metrics["payload_bytes"]:
        raise ConfigError(
            f"{metrics_path}: payload_bytes {metrics['payload_bytes']} != {expected} computed now; "
            f"the artifact format changed since this run, so drop it or re-export it"
        )
    return MeasuredRun(name=run_dir.name, cfg=cfg, model_bytes=on_disk, metrics=metrics)


# Physical upper bounds, in bytes per unit: zstd does not (meaningfully) expand data, so an int8
# container costs at most 1 byte, an fp16 value at most 2. Without them, the rare components
# (scales, small floats) soak up noise and get absurd coefficients that extrapolate badly.
UPPER_BOUNDS = {**{f: 1.0 for f in FEATURES if f.startswith("codes_")},
                "scales_fp16": 2.0, "floats_fp16": 2.0, "header_bytes": 1.0, "frame": 1024.0}


def _solve_bounded(x: np.ndarray, y: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Least squares with 0 <= coef <= upper: pin the worst offender to its bound, refit the rest."""
    coef = np.zeros(x.shape[1])
    free = list(range(x.shape[1]))
    while free:
        rest = y - x @ coef  # coef holds the pinned values; free entries are 0 here
        sol, *_ = np.linalg.lstsq(x[:, free], rest, rcond=None)
        low, high = sol < 0, sol > upper[free]
        if not (low.any() or high.any()):
            coef[free] = sol
            return coef
        # Pin the coefficient furthest outside its box (relative to its bound), then refit.
        violation = np.where(low, -sol, 0.0) + np.where(high, sol - upper[free], 0.0)
        worst = int(np.argmax(violation / upper[free]))
        coef[free[worst]] = 0.0 if low[worst] else upper[free[worst]]
        free.pop(worst)
    return coef


def _fit_coefficients(rows: np.ndarray, measured: np.ndarray, fit_idx: list[int]) -> np.ndarray:
    """Fit the selected feature columns, minimising relative (not absolute) error so small runs count too."""
    x = rows[:, fit_idx] / measured[:, None]
    upper = np.array([UPPER_BOUNDS[FEATURES[i]] for i in fit_idx])
    return _solve_bounded(x, np.ones(len(measured)), upper)


def fit(runs: list[MeasuredRun], prior: Calibration | None = None) -> Calibration:
    """Fit bytes-per-unit coefficients and derive the safety margin from leave-one-out errors."""
    if not runs:
        raise ConfigError("calibrate: no runs given; pass one or more RUN_DIRs")
    rows = np.array([[features(r.cfg)[f] for f in FEATURES] for r in runs], dtype=float)
    measured = np.array([r.model_bytes for r in runs], dtype=float)
    fit_idx = [i for i, f in enumerate(FEATURES) if rows[:, i].any()]
    carried = [f for i, f in enumerate(FEATURES) if i not in fit_idx]
    if carried and prior is None:
        raise ConfigError(f"calibrate: no run exercises {carried}; add such runs or pass --prior FILE to carry them over")
    if len(runs) < len(fit_idx) + 1:
        raise ConfigError(f"calibrate: {len(runs)} runs cannot fit {len(fit_idx)} coefficients; pass at least {len(fit_idx) + 1} runs")
    coef = _fit_coefficients(rows, measured, fit_idx)
    coefficients = {f: (float(coef[fit_idx.index(i)]) if i in fit_idx else prior.coefficients[f]) for i, f in enumerate(FEATURES)}

    in_sample = rows @ np.array([coefficients[f] for f in FEATURES])
    loo = np.empty(len(runs))
    for k in range(len(runs)):
        keep = np.arange(len(runs)) != k
        c = _fit_coefficients(rows[keep], measured[keep], fit_idx)
        loo[k] = rows[k, fit_idx] @ c + sum(rows[k, i] * coefficients[FEATURES[i]] for i in range(len(FEATURES)) if i not in fit_idx)
    rel = (measured - in_sample) / measured
    loo_under = float(max(0.0, np.max(measured / loo - 1.0)))
    margin = max(MIN_MARGIN_FRACTION, SAFETY_FACTOR * loo_under)
    if carried:
        margin = max(margin, prior.safety_margin_fraction)
    synthetic = [r for r in runs if r.metrics.get("synthetic")]
    provenance = {
        "provisional": bool(synthetic),
        "note": (
            "PROVISIONAL: fitted on synthetic weights written with trainer.artifact.save (distributions "
            f"{sorted({str(r.metrics.get('distribution')) for r in synthetic})}), not on trained models; refit with "
            "`python -m spaces calibrate RUN_DIR...` once GPU runs exist"
            if synthetic
            else "fitted on trained-model artifacts"
        ),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "devices": sorted({str(r.metrics.get("device", "unknown")) for r in runs}),
        "fitted_on_host": platform.node() or "unknown",
        "carried_over_from_prior": carried,
        "bounds": "0 <= bytes per unit <= raw size (codes 1, fp16 2, header 1)",
        "margin_rule": f"max({MIN_MARGIN_FRACTION}, {SAFETY_FACTOR} x worst leave-one-out under-prediction)"
        + (" and at least the prior's margin (some coefficients carried over)" if carried else ""),
        "fit": {
            "runs": len(runs),
            "max_abs_error_pct": round(100 * float(np.max(np.abs(rel))), 3),
            "rms_error_pct": round(100 * float(np.sqrt(np.mean(rel**2))), 3),
            "worst_underprediction_loo_pct": round(100 * loo_under, 3),
        },
        "runs": [
            {
                "name": r.name,
                "quant_bits": r.cfg.export.quant_bits,
                "model_dim": r.cfg.model.model_dim,
                "virtual_layers": len(r.cfg.model.schedule_order),
                "distribution": r.metrics.get("distribution", "trained"),
                "measured_model_bytes": r.model_bytes,
                "predicted_model_bytes": round(float(p)),
                "error_pct": round(100 * float(e), 3),
            }
            for r, p, e in zip(runs, in_sample, rel)
        ],
    }
    return Calibration(coefficients=coefficients, safety_margin_fraction=round(margin, 5), provenance=provenance)


def write_calibration(calibration: Calibration, path: Path | str) -> None:
    """Write a calibration JSON (pretty, stable key order)."""
    Path(path).write_text(json.dumps(calibration.to_dict(), indent=2, sort_keys=True) + "\n")


def accuracy_table(runs: list[MeasuredRun], calibration: Calibration) -> str:
    """Markdown table of predicted vs measured compressed model bytes per run."""
    lines = [
        "| run | quant_bits | payload_bytes | predicted_model_bytes | measured_model_bytes | error_% |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for r in runs:
        predicted = predict_model_bytes(features(r.cfg), calibration)
        error = 100 * (predicted - r.model_bytes) / r.model_bytes
        worst = max(worst, abs(error))
        lines.append(
            f"| {r.name} | {r.cfg.export.quant_bits} | {artifact.payload_bytes(r.cfg):,} | {round(predicted):,} "
            f"| {r.model_bytes:,} | {error:+.2f} |"
        )
    lines.append("")
    lines.append(f"worst |error|: {worst:.2f}%; safety margin: {100 * calibration.safety_margin_fraction:.2f}% of model bytes")
    return "\n".join(lines)
