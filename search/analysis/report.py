"""Tables, frontier, summary, plot and progress of a search, read from its Optuna study database."""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import optuna
import pandas as pd

from search.analysis import device_use

from search import store
from search.analysis.fidelity import RungFidelity, milestone_values, score_milestones
from search.analysis.overhead import COLUMNS as TIME_COLUMNS
from search.analysis.overhead import breakdown, totals
from search.analysis.pareto import pareto_front
from search.vocabulary import (
    COMPLETE, ENQUEUED_FROM, EXCESS, FAILED, INFEASIBLE_MEASURED, INFEASIBLE_PREDICTED, INTERRUPTED, PRUNED, QUEUED, REASON, REPEAT, RUNGS, RUNGS_BEFORE_COOLDOWN, RUNNING, SAMPLER, STATUS, STATUSES, TUNE_ID, WORKER_TRIAL,
)
from search.settings import SearchSettings, is_uri

COLUMNS = [
    "number", "status", "reason", "summary", "enqueued_from", "unique_params", "virtual_layers", "predicted_artifact_bytes",
    "artifact_bytes", "val_bpb", "val_bpb_sliding", "val_bpb_prequant", "last_rung_val_bpb", "rungs", "final_train_s",
    "steps",
    "device_s", "gpu_s", "worker_trial", *TIME_COLUMNS, "optuna_state", "tune_trial_id", "constraint_excess_bytes", "on_frontier",
]
FORMATS = ("md", "csv", "html")
# Whole-number columns: pandas holds them as floats once one value is missing; the report writes them as integers.
INTEGER_COLUMNS = ("number", "unique_params", "virtual_layers", "predicted_artifact_bytes", "artifact_bytes", "rungs",
                   "steps", "worker_trial", "constraint_excess_bytes", "n", "trials")


def load_study(settings: SearchSettings) -> optuna.Study:
    """Open the search's study read-mostly (no sampler work happens here); a damaged one fails in one line."""
    return store.load_study(settings)


def trial_rungs(t: optuna.trial.FrozenTrial) -> list[tuple[float, float]]:
    """A trial's (train_s, val_bpb) rung reports: its rungs attr, else its intermediate values (step = ms)."""
    rungs = t.user_attrs.get(RUNGS)
    if rungs:
        return [(float(s), float(v)) for s, v in rungs]
    return [(ms / 1000.0, float(v)) for ms, v in sorted(t.intermediate_values.items())]


def time_breakdown(t: optuna.trial.FrozenTrial) -> dict:
    """The trial's wall time split into train/startup/compile/wait/eval/export/other; pruned trials know the parts
    up to train_s (from their stopping rung), not their evaluations."""
    a, rungs = t.user_attrs, trial_rungs(t)
    train_s = a.get("final_train_s", rungs[-1][0] if rungs else None)
    return breakdown(train_s, a.get("compile_s"), a.get("eval_s"), a.get("export_s"), trainer_wall_s=a.get("wall_s"),
                     tune_wall_s=a.get("device_s"), startup_s=a.get("startup_s"), wait_s=a.get("wait_s"))


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per Optuna trial, including configs rejected by the size model, with the frontier marked."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rungs = trial_rungs(t)
        status = a.get(STATUS) or {optuna.trial.TrialState.RUNNING: RUNNING,
                                    optuna.trial.TrialState.WAITING: QUEUED}.get(t.state, FAILED)
        rows.append({
            "number": t.number,
            "status": status,
            "reason": a.get(REASON, ""),
            "summary": a.get("summary", ""),
            "enqueued_from": a.get(ENQUEUED_FROM, ""),
            "unique_params": a.get("unique_params"),
            "virtual_layers": a.get("virtual_layers"),
            "predicted_artifact_bytes": a.get("predicted_artifact_bytes"),
            "artifact_bytes": a.get("artifact_bytes"),
            "val_bpb": a.get("val_bpb"),
            "val_bpb_sliding": a.get("val_bpb_sliding"),  # with train.eval_stride; --objective may rank by it
            "val_bpb_prequant": a.get("val_bpb_prequant"),
            "last_rung_val_bpb": rungs[-1][1] if rungs else None,
            "rungs": len(rungs),
            "final_train_s": a.get("final_train_s"),
            "steps": a.get("steps"),
            "device_s": float(a.get("device_s", 0.0)),
            "gpu_s": float(a.get("gpu_s", 0.0)),
            "worker_trial": a.get(WORKER_TRIAL),
            **time_breakdown(t),
            "optuna_state": t.state.name,
            "tune_trial_id": a.get(TUNE_ID, ""),
            "constraint_excess_bytes": a.get(EXCESS),
            "predicted_fits": a.get("predicted_fits"),
        })
    df = pd.DataFrame(rows, columns=COLUMNS + ["predicted_fits"])
    df["on_frontier"] = False
    if len(df):
        df.loc[frontier_table(df).index, "on_frontier"] = True
    return df


def feasible_finished(df: pd.DataFrame, limit_bytes: int = 16_000_000) -> pd.DataFrame:
    """Trials that finished, exported and measured within the limit: the only frontier candidates."""
    done = df[(df["status"] == COMPLETE) & df["val_bpb"].notna() & df["artifact_bytes"].notna()]
    return done[done["artifact_bytes"].astype(float) <= limit_bytes]


def frontier_table(df: pd.DataFrame, limit_bytes: int = 16_000_000) -> pd.DataFrame:
    """The Pareto frontier of (val_bpb, artifact_bytes) among feasible finished trials, best val_bpb first."""
    cand = feasible_finished(df, limit_bytes)
    points = list(zip(cand["val_bpb"].astype(float), cand["artifact_bytes"].astype(float)))
    keep = pareto_front(points)
    return cand.iloc[keep].sort_values(["val_bpb", "artifact_bytes"])


def summary(df: pd.DataFrame, settings: SearchSettings) -> dict:
    """Counts per status, best trial, compute spent, and compute spent on predicted-infeasible configs."""
    counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    front = frontier_table(df, settings.limit_bytes)
    best = front.iloc[0] if len(front) else None
    predicted_infeasible = df[df["predicted_fits"] == False]  # noqa: E712 (None means unknown)
    launched = df[df["tune_trial_id"].astype(str) != ""]
    return {
        "name": settings.name,
        "trials_requested": settings.trials,
        "optuna_trials": int(len(df)),
        "launched": int(len(launched)),
        "counts": counts,
        "rejected_by_size_model": counts[INFEASIBLE_PREDICTED],
        "rejected_as_repeats": counts[REPEAT],
        "gpu_s_on_predicted_infeasible": float(predicted_infeasible["gpu_s"].sum()),
        "device_s_on_predicted_infeasible": float(predicted_infeasible["device_s"].sum()),
        "launched_predicted_infeasible": int((predicted_infeasible["tune_trial_id"].astype(str) != "").sum()),
        "gpu_s_total": float(df["gpu_s"].sum()),
        "device_s_total": float(df["device_s"].sum()),
        "frontier_size": int(len(front)),
        "best": None if best is None else {
            "number": int(best["number"]), "val_bpb": float(best["val_bpb"]),
            "artifact_bytes": int(best["artifact_bytes"]), "summary": best["summary"],
        },
        "limit_bytes": settings.limit_bytes,
        "early_stopping": settings.early_stopping,
        "rungs_s": list(settings.asha_milestones_s),
        "earlier_first_rungs_s": list(settings.earlier_grace_s),
        "time": totals(df[list(TIME_COLUMNS)].to_dict("records")),
    }


# Below this many completed trials the importances rest on too little to mean much (the report says so).
IMPORTANCE_MIN_TRIALS = 5


def param_importances(study: optuna.Study, objective: str = "val_bpb") -> dict:
    """Optuna's parameter importances for the first objective (the search's --objective, e.g. val_bpb) over the
    completed trials, with how many trials they rest on and a note when that is too few.

    PED-ANOVA: Optuna's default, it needs no package beyond Optuna (fANOVA needs scikit-learn) and judges
    conditional parameters (e.g. `untie_mlp`, asked only for orders that repeat a block) on the trials that have
    them. Importances sum to 1; a lone value or none at all says nothing.
    """
    import warnings

    trials = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if t.values and pd.notna(t.values[0])]
    info = {"evaluator": "PED-ANOVA", "target": objective, "trials": len(trials), "importances": {},
            "note": ""}
    if len(trials) < 2:
        info["note"] = f"{len(trials)} completed trial(s): no importances"
        return info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks the evaluator experimental
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=lambda t: t.values[0])
    info["importances"] = {name: float(v) for name, v in sorted(values.items(), key=lambda kv: -kv[1])}
    if len(trials) < IMPORTANCE_MIN_TRIALS:
        info["note"] = f"only {len(trials)} completed trials (< {IMPORTANCE_MIN_TRIALS}): too few to mean much"
    return info


def importance_frame(info: dict) -> pd.DataFrame:
    """The importances as a table: parameter, importance, rank."""
    rows = [{"parameter": name, "importance": round(value, 4), "rank": i + 1}
            for i, (name, value) in enumerate(info["importances"].items())]
    return pd.DataFrame(rows, columns=["parameter", "importance", "rank"])


def importance_text(info: dict) -> str:
    """One line saying what the importances rest on."""
    text = (f"{info['evaluator']} importances of the space's parameters for {info['target']}, over "
            f"{info['trials']} completed trials (they sum to 1).")
    return text + (f" Note: {info['note']}." if info["note"] else "")


def study_rung_values(study: optuna.Study, settings: SearchSettings) -> tuple[dict, dict, dict, dict]:
    """A search's rung values per milestone, its completed trials' final and pre-quantization val_bpb, and the
    rung values before their cooldown (--rung-cooldown-fraction; empty without)."""
    trials = study.get_trials(deepcopy=False)
    at = milestone_values({t.number: trial_rungs(t) for t in trials}, settings.report_every_s,
                          settings.reported_milestones_s)
    at_before = milestone_values({t.number: t.user_attrs.get(RUNGS_BEFORE_COOLDOWN, []) for t in trials},
                                 settings.report_every_s, settings.reported_milestones_s)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    finals = {t.number: float(t.user_attrs["val_bpb"]) for t in done if t.user_attrs.get("val_bpb") is not None}
    prequant = {t.number: float(t.user_attrs["val_bpb_prequant"]) for t in done
                if t.user_attrs.get("val_bpb_prequant") is not None}
    return at, finals, prequant, at_before


def study_fidelity(study: optuna.Study, settings: SearchSettings) -> list[RungFidelity]:
    """Rung fidelity of a search: per report milestone, Spearman of rung vs final val_bpb over completed trials
    (and vs the final pre-quantization val_bpb: rungs are unquantized, so that one leaves out the export)."""
    at, finals, prequant, at_before = study_rung_values(study, settings)
    return score_milestones(at, finals, settings.reported_milestones_s, prequant, at_before,
                            keep_fraction=1 / settings.reduction_factor)


def fidelity_frame(fidelity: list[RungFidelity]) -> pd.DataFrame:
    """The fidelity rows as a table: rung_s, asha, n, spearman, spearman_prequant (or why there is none) and the
    permutation p-value of spearman > 0."""
    def shown(rho: float | None, note: str) -> str:
        return f"{rho:+.3f}" if rho is not None else note

    rows = [{"rung_s": f.rung_s, "asha": "yes" if f.asha else "", "n": f.n,
             "spearman": shown(f.spearman, f.note), "spearman_prequant": shown(f.spearman_prequant, f.note),
             "p_positive": "" if f.p_positive is None else f"{f.p_positive:.3f}",
             "spearman_before_cooldown": shown(f.spearman_before_cooldown, ""),
             "best_final_rank": "" if f.best_final_rank is None else f"{f.best_final_rank} of {f.n}",
             "regret_kept": "" if f.regret_kept is None else f"{f.regret_kept:.4f}"}
            for f in fidelity]
    columns = ["rung_s", "asha", "n", "spearman", "spearman_prequant", "p_positive", "best_final_rank",
               "regret_kept"]
    if any(f.spearman_before_cooldown is not None for f in fidelity):  # only searches with rung cooldowns
        columns.append("spearman_before_cooldown")
    return pd.DataFrame(rows, columns=columns)


DEVICE_COLUMNS = ["device", "trials", "in_use_s", "train_s", "wait_s", "outside_training_pct",
                  "before_first_training_s", "outside_training_after_first_pct"]


def device_rows(settings: SearchSettings) -> list[dict]:
    """The device-use rows of a search on local storage (none when its trials wrote no timeline)."""
    if is_uri(settings.storage):
        return []
    return device_use.device_use(device_use.read_entries(Path(store.experiment_path(settings))))


def device_text(t: dict | None) -> str:
    """One line: how much of the devices' time in use went to training."""
    if not t:
        return "no trial timeline recorded (DDP trials, cloud storage, or none trained yet)"
    after = t["outside_training_after_first_pct"]
    return (f"{t['devices']} device(s) in use {t['in_use_s']:.1f} s over {t['trials']} trials, training "
            f"{t['train_s']:.1f} s; outside training {t['outside_training_pct']:.1f}% "
            f"({'n/a' if after is None else f'{after:.1f}%'} after the first {t['before_first_training_s']:.1f} s "
            "of start-up and compile)")


def time_text(t: dict) -> str:
    """One line: total seconds per part and the overall non-training share."""
    if not t["trials"]:
        return "no launched trial has a recorded wall time yet"
    return (f"{t['wall_s']:.1f} s wall over {t['trials']} trials: train {t['train_s']:.1f}, startup "
            f"{t['startup_s']:.1f}, compile {t['compile_s']:.1f}, wait {t['wait_s']:.1f}, eval {t['eval_s']:.1f}, export "
            f"{t['export_s']:.1f}, other {t['other_s']:.1f}; non-training share {t['overhead_pct']:.1f}%")


def integer_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with the whole-number columns (INTEGER_COLUMNS) as nullable integers: 12, not 12.0."""
    out = df.copy()
    for column in INTEGER_COLUMNS:
        if column in out.columns and out[column].dtype != bool:
            values = pd.to_numeric(out[column], errors="coerce")
            if int(values.notna().sum()) == int(out[column].notna().sum()):  # every value is a number
                out[column] = values.round().astype("Int64")
    return out


def sampler_info(study: optuna.Study, settings: SearchSettings) -> dict:
    """The sampler recorded in the study (None for a study from before it was recorded) and how many COMPLETE
    trials there are to learn from."""
    trials = study.get_trials(deepcopy=False)
    return {"recorded": study.user_attrs.get(SAMPLER), "sampler": settings.sampler, "trials": len(trials),
            "complete_trials": sum(1 for t in trials if t.state == optuna.trial.TrialState.COMPLETE)}


def sampler_text(info: dict) -> str:
    """One line: the sampler and its settings, and what it learns from."""
    recorded = info["recorded"]
    if recorded:
        hidden = ("name", "optuna", "from_trial")
        settings = ", ".join(f"{k}={v}" for k, v in recorded.items() if k not in hidden)
        since = f", from trial {recorded['from_trial']}" if recorded.get("from_trial") else ""
        text = f"{recorded['name']}({settings}), optuna {recorded.get('optuna', '?')}{since}"
    else:
        text = f"{info['sampler']} (settings not recorded: the study predates the record)"
    if info["sampler"] == "nsga2":
        return (f"{text}; NSGA-II learns only from COMPLETE trials: it saw {info['complete_trials']} of "
                f"{info['trials']} (pruned, size-rejected and failed ones are invisible to it)")
    return (f"{text}; TPE learns from COMPLETE trials and from PRUNED ones at their last rung value, and keeps "
            "away from infeasible ones (excess_bytes > 0)")


def cell_text(v) -> str:
    """A table cell as the md and HTML reports print it: missing empty, integers with thousands separators,
    floats to 4 decimals (whole units from 100 on)."""
    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """GitHub markdown table of a frame (pandas' to_markdown needs tabulate, which is not a dependency)."""
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = integer_columns(df).astype(object).itertuples(index=False)
    body = ["| " + " | ".join(cell_text(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join([head, rule, *body])


RUNG_NOTES = {
    False: "Rungs are scored before quantization; `spearman_prequant` ranks against the final pre-quantization "
           "val_bpb, so the gap between the two columns is what the export (quant bits) reorders.",
    True: "Rungs are scored after the quantization round trip (--rung-roundtrip), as the final val_bpb is, but "
          "without GPTQ (export.gptq): a rung rounds each row to the nearest step of the same grid. "
          "`spearman_prequant` ranks them against the final pre-quantization val_bpb.",
    None: "How rungs were scored differs between trials (--rung-roundtrip); read each trial's config.",
}


CUT_NOTE = ("`best_final_rank`: where the trial with the best final val_bpb ranked at this rung. `regret_kept`: "
            "the best final val_bpb among the rung's best 1/reduction_factor of the trials (ASHA's keep share) "
            "minus the best final of all; 0 means a cut there keeps the winner. Both over the completed trials "
            "only: in an ASHA search those all passed its rungs, so run `--early-stopping none` to measure a cut "
            "on trials no rung selected.")
P_POSITIVE_NOTE = ("`p_positive` is the one-sided permutation p-value of spearman > 0: how often a random ranking "
                   "of the same n trials agrees at least as well (a search completes few trials; n = 4 cannot go "
                   "below 1/24).")


def trials_train_setting(study: optuna.Study, key: str, default, settings: SearchSettings | None = None):
    """How the study's trials scored their rungs (rung_roundtrip, rung_cooldown_fraction): the value if they agree
    (the default where no trial ran), None if they differ. Trials from before the setting moved to the search's
    settings recorded it in their run config's train section; the others ran the search's setting (the default
    without settings)."""
    current = default if settings is None else getattr(settings, key)
    values = {t.user_attrs["run_config"].get("train", {}).get(key, current)
              for t in study.get_trials(deepcopy=False) if "run_config" in t.user_attrs}
    return values.pop() if len(values) == 1 else (default if not values else None)


def rung_cooldown_fraction(study: optuna.Study, settings: SearchSettings | None = None) -> float | None:
    """The trials' rung cooldown fraction (0 for trials from before it; None: it differs between them)."""
    value = trials_train_setting(study, "rung_cooldown_fraction", 0.0, settings)
    return None if value is None else float(value)


def rungs_after_roundtrip(study: optuna.Study, settings: SearchSettings | None = None) -> bool | None:
    """Whether the trials scored their rungs after the quantization round trip (False where none ran; None: mixed)."""
    value = trials_train_setting(study, "rung_roundtrip", False, settings)
    return None if value is None else bool(value)


def header_lines(info: dict, early_stopping: str) -> list[str]:
    """The report's summary lines (markdown bullets, HTML list items)."""
    lines = [f"sampler: {sampler_text(info['sampler'])}" if info.get("sampler") else "",
             f"trials: {info['optuna_trials']} proposed, {info['launched']} launched "
             f"(requested {info['trials_requested']})",
             "status: " + ", ".join(f"{k} {v}" for k, v in info["counts"].items() if v),
             f"rejected by the size model before launch: {info['rejected_by_size_model']}; "
             f"GPU-seconds spent on them: {info['gpu_s_on_predicted_infeasible']:.1f}",
             f"repeats of a launched config, not launched: {info['rejected_as_repeats']}",
             f"early stopping: {early_stopping}",
             f"GPU-seconds total: {info['gpu_s_total']:.1f} (trial wall-seconds {info['device_s_total']:.1f})",
             f"time: {time_text(info['time'])}",
             f"devices: {device_text(info['devices'])}"]
    if info["best"]:
        b = info["best"]
        lines.append(f"best: trial {b['number']} val_bpb {b['val_bpb']:.4f} at {b['artifact_bytes']:,} bytes "
                     f"({b['summary']})")
    return [line for line in lines if line]


def _markdown(df: pd.DataFrame, front: pd.DataFrame, info: dict, fidelity: list[RungFidelity],
              devices: pd.DataFrame, early_stopping: str) -> str:
    cols = [c for c in COLUMNS if c not in ("optuna_state", "constraint_excess_bytes", *TIME_COLUMNS)]
    timed = df[df["wall_s"].notna()]
    lines = [f"# Search `{info['name']}`", "", *(f"- {line}" for line in header_lines(info, early_stopping))]
    lines += ["", "## Pareto frontier (val_bpb, artifact_bytes)", "",
              markdown_table(front[cols]) if len(front) else "_no feasible finished trial yet_",
              "", "## All trials", "", markdown_table(df[cols]) if len(df) else "_none_",
              "", "## Trial time (seconds)", "",
              "wall_s = train_s + startup_s + compile_s + wait_s + eval_s + export_s + other_s; overhead_pct = "
              "non-training share. startup_s is the trainer's set-up before compiling (tokenizer, val tokens, model, "
              "optimizers, data); wait_s is waiting for a GPU that another trial was training on (--trials-per-gpu); "
              "other_s is the rest: rung checkpoints, reporting (a fresh worker's process start precedes both "
              "clocks). Pruned trials record train_s, startup_s, compile_s and wait_s: their rung evaluations are in "
              "other_s. worker_trial: 1 in a fresh worker process, 2+ in a reused "
              "one (no process start, imports or CUDA context to pay).",
              "", markdown_table(timed[["number", "status", "worker_trial", *TIME_COLUMNS]]) if len(timed) else "_none_",
              "", "## Device use", "",
              "Each device's time in use is the union of its trials' spans, from the start of a trial function to "
              "its end; train_s is what they trained in it. With --trials-per-gpu > 1 one trial's start-up and "
              "compile overlap another's training, so this, not the per-trial share above, is the GPU's "
              "non-training share. before_first_training_s is the device's time before any trial first trained "
              "(start-up and the first compile, with nothing to overlap); outside_training_after_first_pct leaves "
              "it out: the share that a longer search keeps.", "",
              markdown_table(devices) if len(devices) else "_no trial timeline recorded_",
              "", "## Rung fidelity (Spearman of rung val_bpb vs final val_bpb, completed trials)", "",
              RUNG_NOTES[info.get("rungs_after_roundtrip")], "",
              P_POSITIVE_NOTE, "", CUT_NOTE, "",
              markdown_table(fidelity_frame(fidelity)) if fidelity else "_no rung reports yet_", ""]
    if info.get("importances"):
        imp = info["importances"]
        lines += ["## What the search learned: parameter importances", "", importance_text(imp), "",
                  markdown_table(importance_frame(imp)) if imp["importances"] else "_none yet_", ""]
    return "\n".join(lines)


# Status -> (colour, marker, legend label) of the plotted trials; a pruned trial has no final val_bpb.
PLOT_STYLES = {
    COMPLETE: ("tab:blue", "o", "complete"),
    INFEASIBLE_MEASURED: ("tab:red", "o", "over the limit (measured)"),
    PRUNED: ("tab:orange", "v", "pruned: last rung, not final"),
    FAILED: ("tab:gray", "x", "failed: last rung, not final"),
}


def plot_points(df: pd.DataFrame) -> pd.DataFrame:
    """The plotted points: number, status, x (MB: measured, else predicted) and y (final val_bpb, else last rung)."""
    x = df["artifact_bytes"].fillna(df["predicted_artifact_bytes"]).astype(float) / 1e6
    y = df["val_bpb"].fillna(df["last_rung_val_bpb"]).astype(float)
    points = pd.DataFrame({"number": df["number"], "status": df["status"], "x": x, "y": y})
    return points[points["status"].isin(PLOT_STYLES) & points["x"].notna() & points["y"].notna()]


def y_top(y: pd.Series, feasible: pd.Series) -> float:
    """The highest val_bpb the plot shows: every feasible finished trial, and other values up to the upper fence
    (third quartile + 1.5 interquartile ranges); values above it are outliers (a diverging trial, an early rung)."""
    if y.empty:
        return float("nan")
    q1, q3 = float(y.quantile(0.25)), float(y.quantile(0.75))
    fence = q3 + 1.5 * (q3 - q1)
    return max(min(float(y.max()), fence), float(feasible.max()) if len(feasible) else -float("inf"))


def frontier_figure(df: pd.DataFrame, limit_bytes: int = 16_000_000, title: str = ""):
    """Matplotlib figure of all trials (val_bpb vs artifact bytes) with the frontier (points labelled with their
    trial numbers), pruned trials at their last rung, the limit, and the y-axis kept on the feasible region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    points = plot_points(df)
    front = frontier_table(df, limit_bytes)
    top = y_top(points["y"], front["val_bpb"].astype(float) if len(front) else
                points.loc[points["status"] == COMPLETE, "y"])
    above = points[points["y"] > top]
    for status, (color, marker, label) in PLOT_STYLES.items():
        part = points[(points["status"] == status) & (points["y"] <= top)]
        if len(part):
            ax.scatter(part["x"], part["y"], s=24, c=color, marker=marker, alpha=0.8, label=label)
    if len(above):  # outliers drawn on the top edge, in their status's colour
        ax.scatter(above["x"], [top] * len(above), s=30, marker="^", c=[PLOT_STYLES[s][0] for s in above["status"]],
                   edgecolors="black", linewidths=0.5,
                   label=f"{len(above)} above {top:.3f} (clipped to the edge; worst {above['y'].max():.3f})")
    rejected = int((df["status"] == INFEASIBLE_PREDICTED).sum())
    if len(front):
        f = front.sort_values("artifact_bytes")
        fx, fy = f["artifact_bytes"].astype(float) / 1e6, f["val_bpb"].astype(float)
        ax.step(fx, fy, where="post", c="black", lw=1.2, label="Pareto frontier (trial numbers)")
        ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="black")
        for number, x, y in zip(f["number"], fx, fy):
            ax.annotate(f"#{int(number)}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    sizes = df["artifact_bytes"].fillna(df["predicted_artifact_bytes"]).astype(float)
    sizes = sizes[df["status"] != INFEASIBLE_PREDICTED]
    if len(sizes.dropna()) and sizes.max() < 0.25 * limit_bytes:
        # Tiny models (tests, smoke searches): keep the scale readable and name the limit instead.
        ax.plot([], [], c="tab:red", ls="--", lw=1,
                label=f"limit {limit_bytes / 1e6:g} MB off-scale ({rejected} rejected before launch)")
    else:
        ax.axvline(limit_bytes / 1e6, c="tab:red", ls="--", lw=1, label=f"limit ({rejected} rejected before launch)")
    if len(points):
        low = float(points["y"].min())
        pad = 0.05 * (top - low) or 0.01
        ax.set_ylim(low - pad, top + pad)
    ax.set_xlabel("artifact size (MB, 10^6 bytes)")
    ax.set_ylabel("val_bpb (pruned and failed: last rung)")
    ax.set_title(title or "search trials")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(df: pd.DataFrame, path: Path, limit_bytes: int = 16_000_000, title: str = "") -> Path:
    """PNG of frontier_figure at path."""
    import matplotlib.pyplot as plt

    fig = frontier_figure(df, limit_bytes, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_png(df: pd.DataFrame, limit_bytes: int = 16_000_000, title: str = "") -> bytes:
    """frontier_figure as PNG bytes (embedded in the HTML report)."""
    import matplotlib.pyplot as plt

    fig = frontier_figure(df, limit_bytes, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def html_table(df: pd.DataFrame) -> str:
    """HTML table of a frame with the cells of markdown_table (whole numbers as integers, missing empty)."""
    # Cells are rendered first: pandas' to_html prints a missing value of an object column as "None".
    return integer_columns(df).astype(object).apply(lambda column: column.map(cell_text)).to_html(index=False)


def _html(df: pd.DataFrame, front: pd.DataFrame, info: dict, fidelity: list[RungFidelity], devices: pd.DataFrame,
          early_stopping: str, png: bytes) -> str:
    name = html.escape(info["name"])
    items = "".join(f"<li>{html.escape(line)}</li>" for line in header_lines(info, early_stopping))
    image = base64.b64encode(png).decode("ascii")
    return (
        f"<html><head><meta charset='utf-8'><title>{name}</title></head><body>"
        f"<h1>Search {name}</h1><ul>{items}</ul>"
        f"<h2>Trials and Pareto frontier</h2><img alt='val_bpb vs artifact bytes' src='data:image/png;base64,{image}'>"
        f"<h2>Pareto frontier</h2>{html_table(front)}<h2>All trials</h2>{html_table(df)}"
        f"<h2>Rung fidelity</h2><p>{html.escape(P_POSITIVE_NOTE)}</p><p>{html.escape(CUT_NOTE)}</p>"
        f"{html_table(fidelity_frame(fidelity))}"
        f"<h2>Device use</h2>{html_table(devices)}"
        + (f"<h2>Parameter importances</h2><p>{html.escape(importance_text(info['importances']))}</p>"
           f"{html_table(importance_frame(info['importances']))}" if info.get("importances") else "") +
        f"<details><summary>summary.json</summary><pre>{html.escape(json.dumps(info, indent=2))}</pre></details>"
        "</body></html>"
    )


def write_report(settings: SearchSettings, fmt: str = "md", plot_path: Path | None = None) -> dict[str, Path]:
    """Write the table, frontier, summary (and plot) under the search folder; return the paths."""
    study = load_study(settings)
    df = trials_table(study)
    front = frontier_table(df, settings.limit_bytes)
    info = summary(df, settings)
    info["sampler"] = sampler_info(study, settings)
    fidelity = study_fidelity(study, settings)
    info["fidelity"] = [f.to_dict() for f in fidelity]
    info["rungs_after_roundtrip"] = rungs_after_roundtrip(study, settings)
    info["importances"] = param_importances(study, settings.objective)
    rows = device_rows(settings)
    devices = pd.DataFrame(rows, columns=DEVICE_COLUMNS)
    info["devices"] = device_use.totals(rows)
    out = store.report_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "frontier": out / "frontier.csv"}
    paths["summary"].write_text(json.dumps(info, indent=2))
    integer_columns(front).to_csv(paths["frontier"], index=False)
    title = f"search {settings.name}"
    if fmt == "csv":
        paths["table"] = out / "trials.csv"
        integer_columns(df).to_csv(paths["table"], index=False)
    elif fmt == "html":
        paths["table"] = out / "report.html"
        png = plot_png(df, settings.limit_bytes, title)
        paths["table"].write_text(_html(df, front, info, fidelity, devices, settings.early_stopping_text, png))
    else:
        paths["table"] = out / "report.md"
        paths["table"].write_text(_markdown(df, front, info, fidelity, devices, settings.early_stopping_text))
    if plot_path is not None:
        target = plot_path if plot_path.is_absolute() else out / plot_path
        paths["plot"] = plot(df, target, settings.limit_bytes, title=title)
    return paths


def status_text(settings: SearchSettings) -> str:
    """A few lines of progress: counts, running trials with their last rung, best so far."""
    df = trials_table(load_study(settings))
    info = summary(df, settings)
    finished = info["counts"][COMPLETE] + info["counts"][PRUNED] + info["counts"][INFEASIBLE_MEASURED] \
        + int(((df["status"] == FAILED) & (df["tune_trial_id"].astype(str) != "")).sum())
    lines = [f"search {settings.name} ({time.strftime('%H:%M:%S')}): {finished} launched trials finished "
             f"({settings.trials} requested), "
             f"{info['counts'][RUNNING]} running; "
             + ", ".join(f"{k} {v}" for k, v in info["counts"].items() if v)]
    lines.append(f"rejected before launch (predicted > limit): {info['rejected_by_size_model']}, "
                 f"GPU-s on them {info['gpu_s_on_predicted_infeasible']:.0f}; GPU-s total {info['gpu_s_total']:.0f} "
                 f"(trial wall-s {info['device_s_total']:.0f})")
    lines.append(f"time of finished trials: {time_text(info['time'])}")
    lines.append(f"devices: {device_text(device_use.totals(device_rows(settings)))}")
    for _, r in df[df["status"].isin((RUNNING, INTERRUPTED))].iterrows():
        rung = f"last rung val_bpb {r['last_rung_val_bpb']:.4f}" if pd.notna(r["last_rung_val_bpb"]) else "no rung yet"
        lines.append(f"  {r['status']} #{r['number']}: {r['summary']} ({rung})")
    if info["best"]:
        b = info["best"]
        lines.append(f"best: #{b['number']} val_bpb {b['val_bpb']:.4f} at {b['artifact_bytes']:,} bytes ({b['summary']})")
    return "\n".join(lines)
