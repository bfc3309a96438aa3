"""Tables, frontier, summary, plot and progress of a search, read from its Optuna study database."""
from __future__ import annotations

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
    COMPLETE, ENQUEUED_FROM, EXCESS, FAILED, INFEASIBLE_MEASURED, INFEASIBLE_PREDICTED, INTERRUPTED, PRUNED, QUEUED, REASON, REPEAT, RUNGS, RUNGS_BEFORE_COOLDOWN, RUNNING, STATUS, STATUSES, TUNE_ID, WORKER_TRIAL,
)
from search.settings import SearchSettings, is_uri

COLUMNS = [
    "number", "status", "reason", "summary", "enqueued_from", "unique_params", "virtual_layers", "predicted_artifact_bytes",
    "artifact_bytes", "val_bpb", "val_bpb_sliding", "val_bpb_prequant", "last_rung_val_bpb", "rungs", "final_train_s",
    "steps",
    "device_s", "gpu_s", "worker_trial", *TIME_COLUMNS, "optuna_state", "tune_trial_id", "constraint_excess_bytes", "on_frontier",
]
FORMATS = ("md", "csv", "html")


def load_study(settings: SearchSettings) -> optuna.Study:
    """Open the search's study read-mostly (no sampler work happens here)."""
    return optuna.load_study(study_name=settings.name, storage=store.study_url(settings))


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
        "time": totals(df[list(TIME_COLUMNS)].to_dict("records")),
    }


def study_rung_values(study: optuna.Study, settings: SearchSettings) -> tuple[dict, dict, dict, dict]:
    """A search's rung values per milestone, its completed trials' final and pre-quantization val_bpb, and the
    rung values before their cooldown (--rung-cooldown-fraction; empty without)."""
    trials = study.get_trials(deepcopy=False)
    at = milestone_values({t.number: trial_rungs(t) for t in trials}, settings.report_every_s,
                          settings.asha_milestones_s)
    at_before = milestone_values({t.number: t.user_attrs.get(RUNGS_BEFORE_COOLDOWN, []) for t in trials},
                                 settings.report_every_s, settings.asha_milestones_s)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    finals = {t.number: float(t.user_attrs["val_bpb"]) for t in done if t.user_attrs.get("val_bpb") is not None}
    prequant = {t.number: float(t.user_attrs["val_bpb_prequant"]) for t in done
                if t.user_attrs.get("val_bpb_prequant") is not None}
    return at, finals, prequant, at_before


def study_fidelity(study: optuna.Study, settings: SearchSettings) -> list[RungFidelity]:
    """Rung fidelity of a search: per report milestone, Spearman of rung vs final val_bpb over completed trials
    (and vs the final pre-quantization val_bpb: rungs are unquantized, so that one leaves out the export)."""
    at, finals, prequant, at_before = study_rung_values(study, settings)
    return score_milestones(at, finals, settings.asha_milestones_s, prequant, at_before,
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


def markdown_table(df: pd.DataFrame) -> str:
    """GitHub markdown table of a frame (pandas' to_markdown needs tabulate, which is not a dependency)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v).replace("|", "\\|")
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.astype(object).itertuples(index=False)]
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


def _markdown(df: pd.DataFrame, front: pd.DataFrame, info: dict, fidelity: list[RungFidelity],
              devices: pd.DataFrame, early_stopping: str) -> str:
    cols = [c for c in COLUMNS if c not in ("optuna_state", "constraint_excess_bytes", *TIME_COLUMNS)]
    timed = df[df["wall_s"].notna()]
    lines = [f"# Search `{info['name']}`", "",
             f"- trials: {info['optuna_trials']} proposed, {info['launched']} launched "
             f"(requested {info['trials_requested']})",
             "- status: " + ", ".join(f"{k} {v}" for k, v in info["counts"].items() if v),
             f"- rejected by the size model before launch: {info['rejected_by_size_model']}; "
             f"GPU-seconds spent on them: {info['gpu_s_on_predicted_infeasible']:.1f}",
             f"- repeats of a launched config, not launched: {info['rejected_as_repeats']}",
             f"- early stopping: {early_stopping}",
             f"- GPU-seconds total: {info['gpu_s_total']:.1f} (trial wall-seconds {info['device_s_total']:.1f})",
             f"- time: {time_text(info['time'])}",
             f"- devices: {device_text(info['devices'])}"]
    if info["best"]:
        b = info["best"]
        lines.append(f"- best: trial {b['number']} val_bpb {b['val_bpb']:.4f} at {b['artifact_bytes']:,} bytes "
                     f"({b['summary']})")
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
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path, limit_bytes: int = 16_000_000, title: str = "") -> Path:
    """PNG of all trials (val_bpb vs artifact bytes; rung value for pruned) with the frontier and the limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colors = {COMPLETE: "tab:blue", PRUNED: "tab:orange", INFEASIBLE_MEASURED: "tab:red", FAILED: "tab:gray"}
    for status, color in colors.items():
        part = df[df["status"] == status]
        x = part["artifact_bytes"].fillna(part["predicted_artifact_bytes"]).astype(float)
        y = part["val_bpb"].fillna(part["last_rung_val_bpb"]).astype(float)
        ok = x.notna() & y.notna()
        if ok.any():
            label = status + (" (last rung value)" if status == PRUNED else "")
            ax.scatter(x[ok] / 1e6, y[ok], s=22, c=color, alpha=0.75, label=label)
    rejected = int((df["status"] == INFEASIBLE_PREDICTED).sum())
    front = frontier_table(df, limit_bytes)
    if len(front):
        f = front.sort_values("artifact_bytes")
        ax.step(f["artifact_bytes"].astype(float) / 1e6, f["val_bpb"].astype(float), where="post",
                c="black", lw=1.2, label="Pareto frontier")
        ax.scatter(f["artifact_bytes"].astype(float) / 1e6, f["val_bpb"].astype(float), s=60,
                   facecolors="none", edgecolors="black")
    sizes = df["artifact_bytes"].fillna(df["predicted_artifact_bytes"]).astype(float)
    sizes = sizes[df["status"] != INFEASIBLE_PREDICTED]
    if len(sizes.dropna()) and sizes.max() < 0.25 * limit_bytes:
        # Tiny models (tests, smoke searches): keep the scale readable and name the limit instead.
        ax.plot([], [], c="tab:red", ls="--", lw=1,
                label=f"limit {limit_bytes / 1e6:g} MB off-scale ({rejected} rejected before launch)")
    else:
        ax.axvline(limit_bytes / 1e6, c="tab:red", ls="--", lw=1, label=f"limit ({rejected} rejected before launch)")
    ax.set_xlabel("artifact size (MB, 10^6 bytes)")
    ax.set_ylabel("val_bpb")
    ax.set_title(title or "search trials")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(settings: SearchSettings, fmt: str = "md", plot_path: Path | None = None) -> dict[str, Path]:
    """Write the table, frontier, summary (and plot) under the search folder; return the paths."""
    study = load_study(settings)
    df = trials_table(study)
    front = frontier_table(df, settings.limit_bytes)
    info = summary(df, settings)
    fidelity = study_fidelity(study, settings)
    info["fidelity"] = [f.to_dict() for f in fidelity]
    info["rungs_after_roundtrip"] = rungs_after_roundtrip(study, settings)
    rows = device_rows(settings)
    devices = pd.DataFrame(rows, columns=DEVICE_COLUMNS)
    info["devices"] = device_use.totals(rows)
    out = store.report_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "frontier": out / "frontier.csv"}
    paths["summary"].write_text(json.dumps(info, indent=2))
    front.to_csv(paths["frontier"], index=False)
    if fmt == "csv":
        paths["table"] = out / "trials.csv"
        df.to_csv(paths["table"], index=False)
    elif fmt == "html":
        paths["table"] = out / "report.html"
        paths["table"].write_text(
            f"<html><head><meta charset='utf-8'><title>{settings.name}</title></head><body>"
            f"<h1>Search {settings.name}</h1><pre>{json.dumps(info, indent=2)}</pre>"
            f"<h2>Pareto frontier</h2>{front.to_html(index=False)}<h2>All trials</h2>{df.to_html(index=False)}"
            f"<h2>Rung fidelity</h2>{fidelity_frame(fidelity).to_html(index=False)}"
            f"<h2>Device use</h2>{devices.to_html(index=False)}"
            "</body></html>"
        )
    else:
        paths["table"] = out / "report.md"
        paths["table"].write_text(_markdown(df, front, info, fidelity, devices, settings.early_stopping_text))
    if plot_path is not None:
        target = plot_path if plot_path.is_absolute() else out / plot_path
        paths["plot"] = plot(df, target, settings.limit_bytes, title=f"search {settings.name}")
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
