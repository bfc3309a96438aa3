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

from spaces.size_model import FEATURES, FIXED_COEFFICIENTS, Calibration, features, predict_model_bytes

# The margin is this many times the fit's worst leave-one-out under-prediction, so an unseen config
# whose error is somewhat worse than any seen one is still caught; never below MIN_MARGIN_FRACTION.
SAFETY_FACTOR = 1.5
MIN_MARGIN_FRACTION = 0.002


@dataclass(frozen=True)
class MeasuredRun:
    """One run directory: its config, measured compressed model bytes, where that figure came from, and metrics."""

    name: str
    cfg: RunConfig
    model_bytes: int
    metrics: dict
    size_source: str = "model.ptz"


def read_run(run_dir: Path | str) -> MeasuredRun:
    """Read metrics.json (+ model.ptz when present) of a run directory, checking that they agree with the config."""
    run_dir = Path(run_dir)
    metrics_path, model_path = run_dir / "metrics.json", run_dir / "model.ptz"
    if not metrics_path.is_file():
        raise ConfigError(f"{run_dir}: missing metrics.json; pass a finished run directory (metrics.json, ideally + model.ptz)")
    metrics = json.loads(metrics_path.read_text())
    for key in ("model_bytes", "payload_bytes", "config"):
        if key not in metrics:
            raise ConfigError(f"{metrics_path}: no '{key}' key; this run predates the size report, re-run it")
    recorded = metrics["config"]
    cfg = from_dict(_with_legacy_init(recorded), where=f"{metrics_path}:config")
    source = "metrics.json model_bytes (model.ptz absent: file size not re-checked)"
    if model_path.is_file():
        on_disk = model_path.stat().st_size
        if on_disk != metrics["model_bytes"]:
            raise ConfigError(f"{run_dir}: model.ptz is {on_disk} bytes but metrics.json says {metrics['model_bytes']}; the run is inconsistent, re-export it")
        source = "model.ptz"
    expected = artifact.payload_bytes(cfg)
    # Older runs' headers hold their config as they wrote it (format 1: with the train section too).
    as_recorded = {artifact.payload_bytes(cfg, recorded, version) for version in (1, artifact.FORMAT_VERSION)}
    if metrics["payload_bytes"] not in {expected, *as_recorded}:
        raise ConfigError(
            f"{metrics_path}: payload_bytes {metrics['payload_bytes']} != {expected} computed now; "
            f"the artifact format changed since this run, so drop it or re-export it"
        )
    return MeasuredRun(name=run_dir.name, cfg=cfg, model_bytes=int(metrics["model_bytes"]), metrics=metrics, size_source=source)


def _with_legacy_init(config: dict) -> dict:
    """A run recorded before model.weight_init existed was initialised uniformly; say so explicitly."""
    model = config.get("model") or {}
    if "weight_init" in model:
        return config
    return {**config, "model": {**model, "weight_init": "uniform"}}


# Physical bounds on each coefficient (bytes per unit). zstd does not meaningfully expand data, so a code
# costs at most its 1-byte container and an fp16 value 2 bytes; one more bit of grid costs ~1/8 byte per
# code (entropy of a finer grid), so at most 2/8; one doubling of row length moves the clip by well under
# a bit, so at most 1/8 byte either way. Without bounds, the rare components (scales, small floats)
# soak up noise and get absurd coefficients that extrapolate badly.
BOUNDS = {
    "codes": (0.0, 1.0), "code_bits": (0.0, 0.25), "code_log2_fanin": (-0.125, 0.125),
    # A zero-initialised matrix's code differs from the others by under 2 bits (H100: 0.3-0.6 bits).
    "zero_init_codes": (-0.25, 0.25), "zero_init_log2_fanin": (-0.125, 0.125),
    "scales_fp16": (0.0, 2.0), "floats_fp16": (0.0, 2.0), "scalars_fp16": (0.0, 2.0),
    "header_bytes": (0.0, 1.0), "frame": (0.0, 1024.0),
    **{f: (v, v) for f, v in FIXED_COEFFICIENTS.items()},
}
FIXED = {FEATURES.index(f): v for f, v in FIXED_COEFFICIENTS.items()}
# A coefficient must be exercised (non-zero feature) by this many runs to be cross-validated.
MIN_SUPPORT = 2


def _solve_bounded(x: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Least squares with lower <= coef <= upper: pin the worst offender to its bound, refit the rest."""
    coef = np.zeros(x.shape[1])
    free = list(range(x.shape[1]))
    while free:
        rest = y - x @ coef  # coef holds the pinned values; free entries are 0 here
        sol, *_ = np.linalg.lstsq(x[:, free], rest, rcond=None)
        low, high = sol < lower[free], sol > upper[free]
        if not (low.any() or high.any()):
            coef[free] = sol
            return coef
        # Pin the coefficient furthest outside its box (relative to the box's width), then refit.
        violation = np.where(low, lower[free] - sol, 0.0) + np.where(high, sol - upper[free], 0.0)
        worst = int(np.argmax(violation / (upper[free] - lower[free])))
        coef[free[worst]] = lower[free[worst]] if low[worst] else upper[free[worst]]
        free.pop(worst)
    return coef


def _fit_coefficients(rows: np.ndarray, measured: np.ndarray, fit_idx: list[int], fixed: dict[int, float] | None = None) -> np.ndarray:
    """Fit the selected feature columns on relative (not absolute) error, so small runs count too; `fixed` pins some."""
    fixed = {**{i: v for i, v in FIXED.items() if i in fit_idx}, **(fixed or {})}
    free = [i for i in fit_idx if i not in fixed]
    offset = sum(rows[:, i] * v for i, v in fixed.items()) if fixed else 0.0
    x = rows[:, free] / measured[:, None]
    lower = np.array([BOUNDS[FEATURES[i]][0] for i in free])
    upper = np.array([BOUNDS[FEATURES[i]][1] for i in free])
    sol = _solve_bounded(x, 1.0 - offset / measured, lower, upper)
    coef = {**dict(zip(free, sol)), **fixed}
    return np.array([coef[i] for i in fit_idx])


def conservative_bound(feature: str, value: float) -> float:
    """The bound of a coefficient that predicts the most bytes for a feature value of this sign."""
    lower, upper = BOUNDS[feature]
    return upper if value >= 0 else lower


def leave_one_out(rows: np.ndarray, measured: np.ndarray, fit_idx: list[int]) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Predict each run from a fit to the others; a coefficient no other run exercises is pinned to its
    conservative bound in that fold (returned per run), so a thinly measured component cannot blow up."""
    preds, pinned = np.empty(len(measured)), {}
    for k in range(len(measured)):
        keep = np.arange(len(measured)) != k
        unsupported = [i for i in fit_idx if i not in FIXED and rows[k, i] != 0 and not rows[keep, i].any()]
        fixed = {i: conservative_bound(FEATURES[i], rows[k, i]) for i in unsupported}
        coef = _fit_coefficients(rows[keep], measured[keep], fit_idx, fixed)
        preds[k] = rows[k, fit_idx] @ coef
        if unsupported:
            pinned[k] = [FEATURES[i] for i in unsupported]
    return preds, pinned


def thin_feature_margins(rows: np.ndarray, fit_idx: list[int], coefficients: dict[str, float]) -> dict[str, float]:
    """Bytes per |unit| to add for each coefficient exercised by fewer than MIN_SUPPORT runs: the distance from
    its fitted value to its physical bound, so a config using it is judged as if that component were worst case."""
    margins = {}
    for i in fit_idx:
        if i not in FIXED and 0 < np.count_nonzero(rows[:, i]) < MIN_SUPPORT:
            f = FEATURES[i]
            lower, upper = BOUNDS[f]
            margins[f] = round(max(upper - coefficients[f], coefficients[f] - lower), 6)
    return margins


def fit(runs: list[MeasuredRun], prior: Calibration | None = None) -> Calibration:
    """Fit bytes-per-unit coefficients and derive the safety margin from leave-one-out errors."""
    if not runs:
        raise ConfigError("calibrate: no runs given; pass one or more RUN_DIRs")
    rows = np.array([list(features(r.cfg).values()) for r in runs], dtype=float)  # FEATURES order
    measured = np.array([r.model_bytes for r in runs], dtype=float)
    fit_idx = [i for i, f in enumerate(FEATURES) if rows[:, i].any()]
    carried = [f for i, f in enumerate(FEATURES) if i not in fit_idx and f not in FIXED_COEFFICIENTS]
    fitted = [i for i in fit_idx if i not in FIXED]
    if carried and prior is None:
        raise ConfigError(f"calibrate: no run exercises {carried}; add such runs or pass --prior FILE to carry them over")
    if len(runs) < len(fitted) + 1:
        raise ConfigError(f"calibrate: {len(runs)} runs cannot fit {len(fitted)} coefficients; pass at least {len(fitted) + 1} runs")
    coef = _fit_coefficients(rows, measured, fit_idx)
    known = {**FIXED_COEFFICIENTS, **(prior.coefficients if prior else {})}
    coefficients = {f: (float(coef[fit_idx.index(i)]) if i in fit_idx else known[f]) for i, f in enumerate(FEATURES)}
    carried_bytes = rows[:, [i for i in range(len(FEATURES)) if i not in fit_idx]] @ np.array(
        [coefficients[f] for i, f in enumerate(FEATURES) if i not in fit_idx])

    in_sample = rows @ np.array([coefficients[f] for f in FEATURES])
    loo_fit, pinned = leave_one_out(rows, measured, fit_idx)
    loo = loo_fit + carried_bytes
    checked = [k for k in range(len(runs)) if k not in pinned]
    if len(checked) < 2:
        raise ConfigError(f"calibrate: only {len(checked)} run(s) can be cross-validated (the others alone exercise "
                          f"some coefficient); add runs that repeat their bit widths and tensor kinds")
    rel = (in_sample - measured) / measured  # positive = over-prediction (the safe side)
    loo_rel = (loo - measured) / measured
    loo_under = float(max(0.0, np.max(measured[checked] / loo[checked] - 1.0)))
    margin = max(MIN_MARGIN_FRACTION, SAFETY_FACTOR * loo_under)
    feature_margins = thin_feature_margins(rows, fit_idx, coefficients)
    if carried:
        margin = max(margin, prior.safety_margin_fraction)
        feature_margins = {**{f: m for f, m in prior.feature_margins.items() if f in carried}, **feature_margins}
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
        "bounds": {f: list(b) for f, b in BOUNDS.items()},
        "margin_rule": (
            f"max({MIN_MARGIN_FRACTION}, {SAFETY_FACTOR} x worst leave-one-out under-prediction over the runs "
            f"that can be cross-validated); a run that alone exercises a coefficient is left out of that max (its "
            f"fold pins the coefficient to its conservative bound) and the coefficient gets a feature_margins entry "
            f"(bytes per |unit| up to its physical bound), added to the margin of any config that uses it"
            + (" ; at least the prior's margin (some coefficients carried over)" if carried else "")
        ),
        "fit": {
            "runs": len(runs),
            "max_abs_error_pct": round(100 * float(np.max(np.abs(rel))), 3),
            "rms_error_pct": round(100 * float(np.sqrt(np.mean(rel**2))), 3),
            "max_abs_loo_error_pct": round(100 * float(np.max(np.abs(loo_rel[checked]))), 3),
            "worst_underprediction_loo_pct": round(100 * loo_under, 3),
            "loo_excluded_runs": {runs[k].name: fs for k, fs in pinned.items()},
            "thin_features": sorted(feature_margins),
        },
        "runs": [
            {
                "name": r.name,
                "quant_bits": r.cfg.export.quant_bits,
                "model_dim": r.cfg.model.model_dim,
                "virtual_layers": len(r.cfg.model.schedule_order),
                "distribution": r.metrics.get("distribution", "trained"),
                "device": str(r.metrics.get("device", "unknown")),
                "train_budget_s": r.cfg.train.budget_s,
                "train_steps": r.metrics.get("steps"),
                "model_bytes_source": r.size_source,
                "measured_model_bytes": r.model_bytes,
                "predicted_model_bytes": round(float(p)),
                "error_pct": round(100 * float(e), 3),
                "loo_predicted_model_bytes": round(float(lp)),
                "loo_error_pct": round(100 * float(le), 3),
            }
            for r, p, e, lp, le in zip(runs, in_sample, rel, loo, loo_rel)
        ],
    }
    return Calibration(coefficients=coefficients, safety_margin_fraction=round(margin, 5), provenance=provenance,
                       feature_margins=feature_margins)


def write_calibration(calibration: Calibration, path: Path | str) -> None:
    """Write a calibration JSON (pretty, stable key order)."""
    Path(path).write_text(json.dumps(calibration.to_dict(), indent=2, sort_keys=True) + "\n")


def loo_from_provenance(calibration: Calibration) -> dict[str, int]:
    """Leave-one-out predicted model bytes per run name, as recorded by fit() (empty for older calibrations)."""
    return {r["name"]: r["loo_predicted_model_bytes"] for r in calibration.provenance.get("runs", [])
            if "loo_predicted_model_bytes" in r}


def accuracy_table(runs: list[MeasuredRun], calibration: Calibration, loo: dict[str, int] | None = None) -> str:
    """Markdown table of predicted vs measured compressed model bytes per run (+ leave-one-out columns if given)."""
    loo = loo or {}
    with_loo = bool(loo) and all(r.name in loo for r in runs)
    head = "| run | quant_bits | payload_bytes | predicted_model_bytes | measured_model_bytes | error_% |"
    lines = [head + (" loo_predicted_model_bytes | loo_error_% |" if with_loo else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if with_loo else "")]
    worst, worst_loo = 0.0, 0.0
    for r in runs:
        predicted = predict_model_bytes(features(r.cfg), calibration)
        error = 100 * (predicted - r.model_bytes) / r.model_bytes
        worst = max(worst, abs(error))
        line = (f"| {r.name} | {r.cfg.export.quant_bits} | {artifact.payload_bytes(r.cfg):,} | {round(predicted):,} "
                f"| {r.model_bytes:,} | {error:+.2f} |")
        if with_loo:
            loo_error = 100 * (loo[r.name] - r.model_bytes) / r.model_bytes
            worst_loo = max(worst_loo, abs(loo_error))
            line += f" {loo[r.name]:,} | {loo_error:+.2f} |"
        lines.append(line)
    lines.append("")
    summary = f"error = predicted - measured (positive = over-prediction, the safe side); worst |error|: {worst:.2f}%"
    if with_loo:
        summary += f"; worst |leave-one-out error|: {worst_loo:.2f}%"
    summary += f"; safety margin: {100 * calibration.safety_margin_fraction:.2f}% of model bytes"
    if calibration.feature_margins:
        summary += f" + per-|unit| bytes for thinly measured features {calibration.feature_margins}"
    lines.append(summary)
    return "\n".join(lines)
