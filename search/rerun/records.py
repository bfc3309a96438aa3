"""Write a records-style submission folder from several seeds of one config.

Each run directory is what `python -m trainer train --out DIR` leaves: metrics.json (val_bpb,
val_loss, artifact_bytes = model_bytes + code_bytes, config with train.seed), model.ptz and
train.log. The folder written, in the shape of the challenge's records/<track>/<date>_<name>/:
    README.md          summary, per-seed table, significance statement, placeholders to fill in
    submission.json    name, author, github_id, date, track, val_bpb/val_loss mean and std, seeds,
                       seed_results, bytes_total (largest artifact over seeds), p-value, ...
    train_seed<S>.log  each run's train log
    model.ptz          the artifact of one seed (artifact_seed in submission.json: by default the first seed
                       whose run folder still has its model.ptz)
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from search.rerun.stats import ALPHA, MIN_GAIN_NATS, RecordVerdict, SeedSummary, record_criterion, summarize
from trainer.metrics import METRICS_FILE, MetricsError, RunMetrics
from trainer.model_config import ConfigError
from trainer.run_config import from_dict

RUN_FILES = (METRICS_FILE, "train.log")
# One seed's artifact goes into the submission, so a run may lack its own (runs carried between machines
# without it); the artifact seed must have one.
ARTIFACT_FILE = "model.ptz"


class RecordError(ValueError):
    """The runs cannot form a submission; the message names the run and the fix."""


@dataclass(frozen=True)
class RunResult:
    """A finished training run's folder: its metrics, and whether its artifact is still there."""

    run_dir: Path
    metrics: RunMetrics
    has_artifact: bool = True  # its model.ptz is in run_dir

    @property
    def seed(self) -> int:
        return self.metrics.seed


@dataclass(frozen=True)
class SubmissionInfo:
    """Who and what the submission is; placeholders are kept visible so they get filled in."""

    name: str
    author: str = "YOUR NAME"
    github_id: str = "YOUR-GITHUB-ID"
    date: str = field(default_factory=lambda: date.today().isoformat())
    track: str = "10min_16mb"
    blurb: str = ""


def load_run(run_dir: Path) -> RunResult:
    """Read one run directory, checking its files exist and agree with each other."""
    run_dir = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RecordError(f"{run_dir}: missing {missing}; pass directories of finished `trainer train` runs")
    try:
        metrics = RunMetrics.read(run_dir / METRICS_FILE)
    except MetricsError as exc:
        raise RecordError(str(exc)) from None
    result = RunResult(run_dir, metrics, has_artifact=(run_dir / ARTIFACT_FILE).is_file())
    if not result.has_artifact:
        return result
    on_disk = (run_dir / ARTIFACT_FILE).stat().st_size
    if on_disk != metrics.model_bytes:
        raise RecordError(f"{run_dir}: model.ptz is {on_disk:,} bytes but metrics.json says {metrics.model_bytes:,}; "
                          "the directory mixes files of different runs")
    return result


def _without_seed(config: dict) -> dict:
    # Read through the config schema, so a run recorded before a setting existed compares equal to a run that
    # wrote that setting's default (a kept run and a new one of the same config).
    try:
        stripped = from_dict(config).to_dict()
    except ConfigError:
        stripped = json.loads(json.dumps(config))
    stripped.get("train", {}).pop("seed", None)
    return stripped


def check_same_config(runs: list[RunResult]) -> None:
    """Seeds of one submission must differ only in their seed."""
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise RecordError(f"seeds {seeds} repeat; each run must use its own seed")
    reference = _without_seed(runs[0].metrics.config)
    for run in runs[1:]:
        if _without_seed(run.metrics.config) != reference:
            raise RecordError(f"{run.run_dir} trained another config than {runs[0].run_dir}; "
                              "a submission reports seeds of one config")


@dataclass(frozen=True)
class RecordStats:
    """Seed summaries of the candidate, and its test against a baseline when one is given."""

    val_bpb: SeedSummary
    val_loss: SeedSummary
    verdict: RecordVerdict | None


def compute_stats(runs: list[RunResult], baseline_val_loss: list[float] | None = None,
                  verdict: RecordVerdict | None = None) -> RecordStats:
    """Summaries over seeds, plus the record criterion: `verdict` where the caller has tested it already, else
    tested here if baseline per-seed val_loss (nats) is given."""
    losses = [r.metrics.val_loss for r in runs]
    if verdict is None and baseline_val_loss:
        verdict = record_criterion(losses, baseline_val_loss)
    return RecordStats(summarize([r.metrics.val_bpb for r in runs]), summarize(losses), verdict)


def submission_json(runs: list[RunResult], stats: RecordStats, info: SubmissionInfo, artifact_seed: int) -> dict:
    """The submission.json content."""
    bytes_total = max(r.metrics.artifact_bytes for r in runs)
    limit_bytes = runs[0].metrics.limit_bytes
    data = {
        "name": info.name, "author": info.author, "github_id": info.github_id, "date": info.date,
        "track": info.track, "blurb": info.blurb,
        "val_bpb": stats.val_bpb.mean, "val_bpb_std": stats.val_bpb.std,
        "val_loss": stats.val_loss.mean, "val_loss_std": stats.val_loss.std,
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): {"val_bpb": r.metrics.val_bpb, "val_loss": r.metrics.val_loss,
                                       "artifact_bytes": r.metrics.artifact_bytes, "model_bytes": r.metrics.model_bytes,
                                       "code_bytes": r.metrics.code_bytes} for r in runs},
        # The largest seed's artifact is the figure that must fit: any seed could be the one reproduced.
        "bytes_total": bytes_total, "limit_bytes": limit_bytes, "under_limit": bytes_total <= limit_bytes,
        "artifact_file": "model.ptz", "artifact_seed": artifact_seed,
        "significance": None,
    }
    if stats.verdict is not None:
        w = stats.verdict.welch
        data["significance"] = {
            "test": "Welch one-sided t-test on per-seed val_loss (nats)",
            "min_gain_nats": stats.verdict.min_gain_nats, "alpha": stats.verdict.alpha,
            "mean_gain_nats": w.mean_gain, "t": w.t, "dof": w.dof, "p_value": w.p_value,
            "meets_criterion": stats.verdict.passes,
        }
    return data


def readme_text(runs: list[RunResult], stats: RecordStats, info: SubmissionInfo, artifact_seed: int) -> str:
    """The README.md content: the numbers, and marked places for the write-up."""
    rows = "\n".join(f"| {r.seed} | {r.metrics.val_bpb:.4f} | {r.metrics.val_loss:.4f} | {r.metrics.artifact_bytes:,} "
                     f"| train_seed{r.seed}.log |" for r in runs)
    if stats.verdict is None:
        significance = ("No baseline was given, so no significance test was run. A record needs a gain of at least "
                        f"{MIN_GAIN_NATS} nats over the current record at p < {ALPHA}.")
    else:
        significance = stats.verdict.explain() + "."
    bytes_total = max(r.metrics.artifact_bytes for r in runs)
    return f"""# {info.name}

{info.blurb or "TODO: one paragraph on the approach (depth recurrence configuration, what changed and why)."}

**val_bpb {stats.val_bpb.mean:.4f} ± {stats.val_bpb.std:.4f}** (mean ± sample std over {stats.val_bpb.n} seeds);
val_loss {stats.val_loss.mean:.4f} ± {stats.val_loss.std:.4f} nats.
Largest artifact: {bytes_total:,} bytes of the {runs[0].metrics.limit_bytes:,}-byte limit (model + code).

| seed | val_bpb | val_loss (nats) | artifact bytes | log |
|---:|---:|---:|---:|---|
{rows}

## Significance

{significance}

## Files

- `submission.json`: the numbers above, per seed.
- `model.ptz`: the artifact of seed {artifact_seed}.
- `train_seed<S>.log`: each seed's training log.

Author: {info.author} (@{info.github_id}), {info.date}.
"""


def write_record(run_dirs: list[Path], out_dir: Path, info: SubmissionInfo,
                 baseline_val_loss: list[float] | None = None, artifact_seed: int | None = None,
                 overwrite: bool = False, verdict: RecordVerdict | None = None) -> Path:
    """Write the submission folder for these runs to out_dir (artifact: artifact_seed's, else the first found);
    the record criterion is `verdict` if given (the caller's test), else tested against baseline_val_loss."""
    if not run_dirs:
        raise RecordError("no run directories given; pass the seeds' `trainer train --out` folders")
    runs = [load_run(d) for d in run_dirs]
    check_same_config(runs)
    seeds = [r.seed for r in runs]
    with_artifact = [r.seed for r in runs if r.has_artifact]
    if artifact_seed is None:
        if not with_artifact:
            raise RecordError(f"no run has its {ARTIFACT_FILE} ({', '.join(str(d) for d in run_dirs)}); pass the run "
                              "folders whole (train.log, metrics.json and model.ptz)")
        artifact_seed = with_artifact[0]
    if artifact_seed not in seeds:
        raise RecordError(f"artifact seed {artifact_seed} is not among the runs' seeds {seeds}")
    if artifact_seed not in with_artifact:
        raise RecordError(f"artifact seed {artifact_seed}: its run folder has no {ARTIFACT_FILE}; pick one of "
                          f"{with_artifact} or copy that run's {ARTIFACT_FILE} back")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise RecordError(f"{out_dir} is not empty; choose another folder or pass overwrite=True")
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = compute_stats(runs, baseline_val_loss, verdict)
    for run in runs:
        shutil.copyfile(run.run_dir / "train.log", out_dir / f"train_seed{run.seed}.log")
    source = next(r for r in runs if r.seed == artifact_seed)
    shutil.copyfile(source.run_dir / ARTIFACT_FILE, out_dir / "model.ptz")
    data = submission_json(runs, stats, info, artifact_seed)
    data["artifact_file_bytes"] = (out_dir / "model.ptz").stat().st_size
    (out_dir / "submission.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / "README.md").write_text(readme_text(runs, stats, info, artifact_seed))
    return out_dir
