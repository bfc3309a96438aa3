"""Fit the size model to measured artifacts (run directories) and report its accuracy."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import artifact
from trainer.metrics import MetricsError, read_record
from trainer.model_config import ConfigError
from trainer.run_config import RunConfig, TrainConfig, from_dict

from trainer.export_pipeline import off_width_bits, tensor_bits
from trainer.sizing.size_model import (FEATURES, FIXED_COEFFICIENTS, Calibration, features, predict_model_bytes,
                                       upgrades_on, worst_case_upgrades)

# The margin is this many times the fit's worst leave-one-config-out under-prediction, so an unseen config
# whose error is somewhat worse than any seen one is still caught; never below MIN_MARGIN_FRACTION.
SAFETY_FACTOR = 1.5
MIN_MARGIN_FRACTION = 0.002
# Train settings that only schedule reports, evaluation and logging (and the seed): a search trial and a rerun of
# one config differ only in these, and their weights come from the same training, so they are one config.
NOT_CONFIG_TRAIN_FIELDS = ("seed", "val_prefix_tokens", "val_batch_tokens", "final_val_tokens", "log_every_steps",
                           "compile_eval")


@dataclass(frozen=True)
class MeasuredRun:
    """One run directory: its config, measured compressed model bytes, where that figure came from, metrics, and the
    tensors its export wrote off their config width (None: a mixed-width export that recorded none)."""

    name: str
    cfg: RunConfig
    model_bytes: int
    metrics: dict
    size_source: str = "model.ptz"
    bits: dict[str, int] | None = dataclasses.field(default_factory=dict)

    def priced_bits(self, calibration: Calibration | None = None) -> dict[str, int]:
        """The allocation to price the measured file at: the recorded one, else the config's worst case."""
        return self.bits if self.bits is not None else worst_case_upgrades(self.cfg, calibration)


def recorded_bits(cfg: RunConfig, metrics: dict, model_path: Path) -> dict[str, int] | None:
    """A run's off-width tensors: from metrics.json (version 4 on), else from its model.ptz; None when neither
    says and the export could have mixed widths."""
    if metrics.get("upgraded_bits") is not None:
        return dict(metrics["upgraded_bits"])
    if model_path.is_file():
        return off_width_bits(tensor_bits(artifact.payload_of(model_path)), cfg)
    return None if upgrades_on(cfg.export) else {}


def read_run(run_dir: Path | str) -> MeasuredRun:
    """Read metrics.json (+ model.ptz when present) of a run directory, checking that they agree with the config."""
    run_dir = Path(run_dir)
    metrics_path, model_path = run_dir / "metrics.json", run_dir / "model.ptz"
    if not metrics_path.is_file():
        raise ConfigError(f"{run_dir}: missing metrics.json; pass a finished run directory (metrics.json, ideally + model.ptz)")
    try:
        metrics = read_record(metrics_path)  # a trained run's, a synthetic one's or one rebuilt from its log
    except MetricsError as exc:
        raise ConfigError(str(exc)) from None
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
    as_recorded = {artifact.payload_bytes(cfg, recorded, version) for version in artifact.READABLE_FORMATS}
    if metrics["payload_bytes"] not in {expected, *as_recorded}:
        raise ConfigError(
            f"{metrics_path}: payload_bytes {metrics['payload_bytes']} != {expected} computed now; "
            f"the artifact format changed since this run, so drop it or re-export it"
        )
    return MeasuredRun(name=run_dir.name, cfg=cfg, model_bytes=int(metrics["model_bytes"]), metrics=metrics,
                       size_source=source, bits=recorded_bits(cfg, metrics, model_path))


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
    # GPTQ moves a code to a neighbour value at most, so under a bit of entropy (H100: about 0.1 bit).
    "gptq_codes": (0.0, 0.125),
    "scales_fp16": (0.0, 2.0), "floats_fp16": (0.0, 2.0), "scalars_fp16": (0.0, 2.0),
    "header_bytes": (0.0, 1.0), "frame": (0.0, 1024.0),
    **{f: (v, v) for f, v in FIXED_COEFFICIENTS.items()},
}
FIXED = {FEATURES.index(f): v for f, v in FIXED_COEFFICIENTS.items()}
# A coefficient must be exercised (non-zero feature) by this many configs to be cross-validated.
MIN_SUPPORT = 2


def _solve_bounded(x: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Least squares with lower <= coef <= upper, solved exactly (bounded-variable least squares, scipy)."""
    from scipy.optimize import lsq_linear

    if x.shape[1] == 0:
        return np.zeros(0)
    # BVLS is an active-set method that ends at the exact optimum; pinning the worst offender and refitting
    # the rest can stop at a worse point (the margin is derived from this fit's errors).
    coef = lsq_linear(x, y, bounds=(lower, upper), method="bvls").x
    return np.clip(coef, lower, upper) + 0.0  # exactly on a bound it reached (and no -0.0)


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


def config_key(run: MeasuredRun) -> tuple:
    """What makes two runs the same config for cross-validation: the trained network (model + train settings
    that shape the weights, any seed) and, for synthetic runs, the weight distribution."""
    defaults = TrainConfig()
    train = dataclasses.replace(run.cfg.train, **{f: getattr(defaults, f) for f in NOT_CONFIG_TRAIN_FIELDS})
    # The export is left out on purpose: training never reads it, so int6 and int8 (or zstd 1 and 22) exports
    # of one trained shape share its weights, and their errors move together (H100, 180 s: +0.9% and +1.3%).
    return run.cfg.model, train, run.metrics.get("distribution")


def config_groups(runs: list[MeasuredRun]) -> list[list[int]]:
    """Indices of the runs of each config (see config_key), in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for k, run in enumerate(runs):
        groups.setdefault(config_key(run), []).append(k)
    return list(groups.values())


def leave_config_out(rows: np.ndarray, measured: np.ndarray, fit_idx: list[int],
                     groups: list[list[int]]) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Predict each run from a fit to the runs of the other configs: plain leave-one-out would keep a run's
    sibling seeds and exports in the fit and so judge its config too kindly. A coefficient that no run of
    another config exercises is pinned to its conservative bound for that run (returned per run), so a thinly
    measured component cannot blow up."""
    preds, pinned = np.empty(len(measured)), {}
    for group in groups:
        keep = np.ones(len(measured), dtype=bool)
        keep[group] = False
        unsupported = [i for i in fit_idx if i not in FIXED and rows[group, i].any() and not rows[keep, i].any()]
        # No kept run exercises these, so their value cannot move the fold's fit: pin any, then each run's own.
        coef = dict(zip(fit_idx, _fit_coefficients(rows[keep], measured[keep], fit_idx,
                                                   {i: BOUNDS[FEATURES[i]][0] for i in unsupported})))
        for k in group:
            own = [i for i in unsupported if rows[k, i] != 0]
            preds[k] = sum(rows[k, i] * (conservative_bound(FEATURES[i], rows[k, i]) if i in own else coef[i])
                           for i in fit_idx)
            if own:
                pinned[k] = [FEATURES[i] for i in own]
    return preds, pinned


def thin_feature_margins(rows: np.ndarray, fit_idx: list[int], coefficients: dict[str, float],
                         groups: list[list[int]]) -> dict[str, float]:
    """Bytes per |unit| to add for each coefficient exercised by fewer than MIN_SUPPORT configs (groups of run
    indices): the distance from its fitted value to its physical bound, so a config using it is judged as if that
    component were worst case."""
    margins = {}
    for i in fit_idx:
        if i not in FIXED and 0 < sum(1 for g in groups if rows[g, i].any()) < MIN_SUPPORT:
            f = FEATURES[i]
            lower, upper = BOUNDS[f]
            margins[f] = round(max(upper - coefficients[f], coefficients[f] - lower), 6)
    return margins


def fit(runs: list[MeasuredRun], prior: Calibration | None = None) -> Calibration:
    """Fit bytes-per-unit coefficients and derive the safety margin from leave-one-config-out errors."""
    if not runs:
        raise ConfigError("calibrate: no runs given; pass one or more RUN_DIRs")
    unknown = [r.name for r in runs if r.bits is None]
    if unknown:
        raise ConfigError(f"calibrate: {unknown} exported mixed widths (export.upgrade) and recorded neither which "
                          "(metrics.json before version 4) nor kept model.ptz; pass their model.ptz or drop them")
    rows = np.array([list(features(r.cfg, bits=r.bits).values()) for r in runs], dtype=float)  # FEATURES order
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
    groups = config_groups(runs)
    group_of = {k: gi for gi, g in enumerate(groups) for k in g}
    out_fit, pinned = leave_config_out(rows, measured, fit_idx, groups)
    out = out_fit + carried_bytes
    checked = [k for k in range(len(runs)) if k not in pinned]
    checked_configs = len({group_of[k] for k in checked})
    if checked_configs < 2:
        raise ConfigError(f"calibrate: only {len(checked)} run(s) of {checked_configs} "
                          f"config(s) can be cross-validated (the others alone exercise some coefficient, or every "
                          f"run is one config); add runs of other configs that repeat their bit widths and tensor kinds")
    rel = (in_sample - measured) / measured  # positive = over-prediction (the safe side)
    out_rel = (out - measured) / measured
    out_under = float(max(0.0, np.max(measured[checked] / out[checked] - 1.0)))
    margin = max(MIN_MARGIN_FRACTION, SAFETY_FACTOR * out_under)
    # For the record only: what plain leave-one-out (siblings kept in the fit) would have said.
    loo_fit, loo_pinned = leave_config_out(rows, measured, fit_idx, [[k] for k in range(len(runs))])
    loo_checked = [k for k in range(len(runs)) if k not in loo_pinned]
    loo_under = float(max(0.0, np.max(measured[loo_checked] / (loo_fit + carried_bytes)[loo_checked] - 1.0)))
    feature_margins = thin_feature_margins(rows, fit_idx, coefficients, groups)
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
            f"max({MIN_MARGIN_FRACTION}, {SAFETY_FACTOR} x worst leave-one-config-out under-prediction over the "
            f"runs that can be cross-validated); a config = the trained network (model + train settings, any seed, "
            f"any export, report/eval/logging settings ignored: calibration.config_key), and each run is predicted "
            f"by a fit to the runs of the other configs (its left_out_with siblings are out of the fit too); a "
            f"config that alone exercises a coefficient is left out of that max (its fold pins the coefficient to "
            f"its conservative bound) and the coefficient gets a feature_margins entry (bytes per |unit| up to its "
            f"physical bound), added to the margin of any config that uses it"
            + (" ; at least the prior's margin (some coefficients carried over)" if carried else "")
        ),
        "fit": {
            "runs": len(runs),
            "max_abs_error_pct": round(100 * float(np.max(np.abs(rel))), 3),
            "rms_error_pct": round(100 * float(np.sqrt(np.mean(rel**2))), 3),
            "configs": len(groups),
            "max_abs_config_out_error_pct": round(100 * float(np.max(np.abs(out_rel[checked]))), 3),
            "worst_underprediction_config_out_pct": round(100 * out_under, 3),
            "worst_underprediction_plain_loo_pct": round(100 * loo_under, 3),
            "config_out_excluded_runs": {runs[k].name: fs for k, fs in pinned.items()},
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
                "config_out_predicted_model_bytes": round(float(op)),
                "config_out_error_pct": round(100 * float(oe), 3),
                "left_out_with": [runs[j].name for j in groups[group_of[k]] if j != k],
            }
            for k, (r, p, e, op, oe) in enumerate(zip(runs, in_sample, rel, out, out_rel))
        ],
    }
    return Calibration(coefficients=coefficients, safety_margin_fraction=round(margin, 5), provenance=provenance,
                       feature_margins=feature_margins)


def write_calibration(calibration: Calibration, path: Path | str) -> None:
    """Write a calibration JSON (pretty, stable key order)."""
    Path(path).write_text(json.dumps(calibration.to_dict(), indent=2, sort_keys=True) + "\n")


def config_out_from_provenance(calibration: Calibration) -> dict[tuple[str, int], int]:
    """Leave-one-config-out predicted model bytes per (run name, measured bytes), as recorded by fit() (empty
    for calibrations written before the grouped rule)."""
    # Keyed by the measured bytes too, so another run that happens to share a fitted run's folder name is not
    # shown with that run's held-out prediction.
    return {(r["name"], r["measured_model_bytes"]): r["config_out_predicted_model_bytes"]
            for r in calibration.provenance.get("runs", []) if "config_out_predicted_model_bytes" in r}


def accuracy_table(runs: list[MeasuredRun], calibration: Calibration,
                   held_out: dict[tuple[str, int], int] | None = None) -> str:
    """Markdown table of predicted vs measured compressed model bytes per run (+ leave-one-config-out columns,
    "-" for a run the fit did not see, when `held_out` is given)."""
    held_out = held_out or {}
    with_out = any((r.name, r.model_bytes) in held_out for r in runs)
    head = "| run | train_s | quant_bits | payload_bytes | predicted_model_bytes | measured_model_bytes | error_% |"
    lines = [head + (" config_out_predicted_model_bytes | config_out_error_% |" if with_out else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if with_out else "")]
    errors, out_errors = [], []
    under, out_under = 0.0, 0.0  # worst measured / predicted - 1: what the margin must cover
    for r in runs:
        predicted = predict_model_bytes(features(r.cfg, bits=r.priced_bits(calibration)), calibration)
        error = 100 * (predicted - r.model_bytes) / r.model_bytes
        errors.append(error)
        under = max(under, r.model_bytes / predicted - 1)
        name = r.name if r.bits is not None else f"{r.name} (widths not recorded: priced at the worst case)"
        line = (f"| {name} | {r.cfg.train.budget_s:g} | {r.cfg.export.quant_bits} | {artifact.payload_bytes(r.cfg):,} "
                f"| {round(predicted):,} | {r.model_bytes:,} | {error:+.2f} |")
        if with_out:
            out = held_out.get((r.name, r.model_bytes))
            if out is None:
                line += " - | - |"
            else:
                out_errors.append(100 * (out - r.model_bytes) / r.model_bytes)
                out_under = max(out_under, r.model_bytes / out - 1)
                line += f" {out:,} | {out_errors[-1]:+.2f} |"
        lines.append(line)
    lines.append("")
    summary = (f"error = predicted - measured (positive = over-prediction, the safe side); worst |error|: "
               f"{max(map(abs, errors)):.2f}%, worst under-prediction (measured / predicted - 1): {100 * under:.2f}%")
    if out_errors:
        summary += (f"; leave-one-config-out: worst |error| {max(map(abs, out_errors)):.2f}%, worst under-prediction "
                    f"{100 * out_under:.2f}%")
    summary += f"; safety margin: {100 * calibration.safety_margin_fraction:.2f}% of model bytes"
    if calibration.feature_margins:
        summary += f" + per-|unit| bytes for thinly measured features {calibration.feature_margins}"
    lines.append(summary)
    return "\n".join(lines)
