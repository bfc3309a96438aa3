"""Typed settings of one search, validated once at the edge and persisted as search.json."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.model_config import ConfigError

from trainer.run_config import parse_override

SAMPLERS = ("tpe", "nsga2")
# asha: ASHA stops weak trials at its rungs. none: no trial is stopped early, but every trial still reports at the
# rungs, so the rung fidelity covers all of them (a fidelity study: ASHA lets only its rungs' winners reach the end).
EARLY_STOPPING = ("asha", "none")
# Ray Tune logger callbacks a search can send its trials' results to (the package is imported only when asked for).
LOGGERS = ("", "wandb", "mlflow")
# The final figure a single-objective search minimizes: the plain round trip's val_bpb, or its sliding-window score
# (trials need train.eval_stride > 0 for that one; rungs rank by the val prefix either way).
OBJECTIVE_METRICS = ("val_bpb", "val_bpb_sliding")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DEFAULT_TRAIN_FN = "trainer.train:train"


class SettingsError(ValueError):
    """A search setting is wrong; the message names the flag and the fix."""


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines one search; enough to resume or report it later."""

    name: str
    space: str  # absolute path of the space YAML
    storage: str  # local directory (absolute) or a cloud URI (s3://, gs://, ...)
    data_dir: str
    tokenizer: str
    trials: int = 16  # trainables launched; configs rejected by the size model do not count
    gpus_per_trial: float = 1.0
    cpus_per_trial: float = 1.0
    max_concurrent: int = 0  # 0: as many as the cluster's resources allow
    # Trials placed on each GPU (1/N GPU each). They start up and compile at once and take turns to train
    # (search.tune.lease), so a new shape's compile overlaps another trial's training. CPU trials (gpus 0) with
    # N > 1 take turns the same way on each machine.
    trials_per_gpu: int = 1
    budget_s: float = 600.0  # training seconds per trial; ASHA's time axis
    grace_s: float = 0.0  # first ASHA rung in training seconds; 0: budget_s / reduction_factor (saved resolved)
    # First rungs the search used before `resume --from-study --grace-s` moved it, oldest first: the trials that
    # ran then reported there, so the report's rung fidelity still reads those reports.
    earlier_grace_s: tuple[float, ...] = ()
    reduction_factor: float = 3.0
    early_stopping: str = "asha"  # one of EARLY_STOPPING
    # Trainer reports (a val-prefix evaluation and a checkpoint each) come at ASHA's rungs only; > 0 adds one
    # every report_every_s training seconds, for more checkpoints and fidelity points at more evaluation time.
    report_every_s: float = 0.0
    # Score each report on the weights after the artifact's quantization round trip, so ASHA ranks what the
    # export will score (on two H200s, rungs ranked against the final val_bpb at Spearman +0.48 at 5 s, against
    # the pre-quant final at +0.95: the export reordered the int5 trials). The pre-quant value is reported too,
    # as val_bpb_prequant.
    rung_roundtrip: bool = False
    # Score each report after a short learning-rate cooldown, then rewind it: this fraction of the steps trained
    # so far, LR decaying linearly to 0 from where it is. A rung mid-schedule ranks configs before their decay,
    # which the final val_bpb comes after (at 180 s a 60 s rung ranked at Spearman +0.19, n = 10; BENCHMARKS.md
    # "Do early rungs rank like the final val_bpb"), so this probes what each would score if it stopped
    # there. The cooldown is evaluation time, never budget.
    rung_cooldown_fraction: float = 0.0
    sampler: str = "tpe"
    seed: int | None = None
    overrides: tuple[str, ...] = ()  # section.key=value applied to every suggested config
    ray_address: str = ""  # "": a running cluster if any, else local; "local": always local
    max_failures: int = 2  # retries per trial after a lost worker/node (resumes from the last checkpoint)
    max_rejections: int = 500  # consecutive size-model rejections before the search gives up
    local_dir: str = ""  # where study.db and reports go when storage is a cloud URI
    train_fn: str = DEFAULT_TRAIN_FN  # "module:function" with trainer.train.train's signature
    limit_bytes: int = 16_000_000
    enqueue: tuple[str, ...] = ()  # run config files whose points of the space are the first trials
    # Where the Optuna study lives: any Optuna storage URL (sqlite:///..., postgresql://..., or journal:///PATH for
    # a JournalStorage file on shared storage); "": study.db (SQLite) in the search folder.
    storage_url: str = ""
    logger: str = ""  # one of LOGGERS: also send every trial result to W&B or MLflow through Ray's callbacks
    # NSGA-II under ASHA: ASHA cuts trials on val_bpb alone and NSGA-II learns only from COMPLETE trials, so the
    # pair is refused unless asked for explicitly.
    asha_with_nsga2: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # room for later commands (e.g. rerun)
    objective: str = "val_bpb"  # one of OBJECTIVE_METRICS

    @property
    def multi_objective(self) -> bool:
        return self.sampler == "nsga2"

    @property
    def gpu_share(self) -> float:
        """GPUs Ray reserves for one trial (a fraction when trials share a GPU)."""
        return self.gpus_per_trial / self.trials_per_gpu

    @property
    def rung_s(self) -> float:
        """Training seconds of the first ASHA rung (default: a third of the budget at rf 3).

        An earlier rung ranks trials close to randomly and prunes the deep configs, which learn slower at first:
        at a 180 s budget a 20 s rung pruned every config with more than 9 virtual layers and its ranking had
        Spearman -0.20 against the final val_bpb (BENCHMARKS.md, "Do early rungs rank like the final val_bpb").
        """
        return self.grace_s or self.budget_s / self.reduction_factor

    @property
    def asha_milestones_s(self) -> tuple[float, ...]:
        """Training seconds where ASHA decides, rung_s * rf^k, the last strictly inside the budget (so no finished
        trial is cut at the end)."""
        count = 1
        while self.rung_s * self.reduction_factor**count < self.budget_s * (1 - 1e-9):
            count += 1
        # Same expression as Ray's ASHA (grace * rf**k), so a report at the milestone is never a float ulp early.
        return tuple(self.rung_s * self.reduction_factor**k for k in range(count))

    @property
    def reported_milestones_s(self) -> tuple[float, ...]:
        """Every rung any of the search's trials reported at: the current ones and those before a moved rung."""
        earlier = (dataclasses.replace(self, grace_s=g, earlier_grace_s=()).asha_milestones_s
                   for g in self.earlier_grace_s)
        return tuple(sorted(set(self.asha_milestones_s).union(*earlier)))

    def with_first_rung(self, grace_s: float) -> "SearchSettings":
        """These settings with the first rung moved to grace_s for the trials still to launch (earlier ones kept)."""
        if grace_s == self.rung_s:
            return self
        return dataclasses.replace(self, grace_s=grace_s,
                                   earlier_grace_s=(*self.earlier_grace_s, self.rung_s)).validate()

    @property
    def early_stopping_text(self) -> str:
        """How trials are stopped, for the CLI and the report: 'ASHA, rungs at 60 s (x3)' or 'none: ...'."""
        rungs = ", ".join(f"{t:g}" for t in self.asha_milestones_s)
        moved = "".join(f"; first rung moved from {g:g} s on a resume" for g in self.earlier_grace_s)
        if self.early_stopping == "none":
            return f"none: every trial trains to the budget (rungs at {rungs} s scored for fidelity only){moved}"
        return f"ASHA, rungs at {rungs} s (x{self.reduction_factor:g}){moved}"

    @property
    def asha_max_t(self) -> float:
        """Top ASHA rung."""
        return self.asha_milestones_s[-1]

    def validate(self) -> "SearchSettings":
        """Raise SettingsError naming the flag and the fix; return the settings, with any override of a run-config
        key that moved here (MOVED_TRAIN_KEYS, as saved searches hold them) turned into its setting."""
        moved = {key: value for key, value in map(_moved, self.overrides) if key is not None}
        if moved:
            kept = tuple(item for item in self.overrides if _moved(item)[0] is None)
            return dataclasses.replace(self, overrides=kept, **_moved_settings(self, moved)).validate()
        _need(bool(NAME_RE.match(self.name)), "--name",
              f"{self.name!r} must be 1-100 characters of letters, digits, '_', '-', '.'")
        _need(self.trials >= 1, "--trials", "must be at least 1")
        _need(self.gpus_per_trial >= 0, "--gpus-per-trial", "must be 0 (CPU) or more")
        _need(self.gpus_per_trial <= 1 or float(self.gpus_per_trial).is_integer(), "--gpus-per-trial",
              "above 1 must be a whole number of GPUs (DDP workers)")
        _need(self.trials_per_gpu >= 1, "--trials-per-gpu", "must be at least 1")
        _need(self.trials_per_gpu == 1 or self.gpus_per_trial in (0, 1), "--trials-per-gpu",
              f"{self.trials_per_gpu} shares one GPU between trials, so it needs --gpus-per-trial 1 (or 0 on the "
              f"CPU), not {self.gpus_per_trial:g}; pass --trials-per-gpu 1 for DDP or fractional trials")
        _need(self.cpus_per_trial > 0, "--cpus-per-trial", "must be positive")
        _need(self.max_concurrent >= 0, "--max-concurrent", "must be 0 (no limit) or more")
        _need(self.budget_s > 0, "--budget-s", "must be positive training seconds")
        _need(self.reduction_factor > 1, "--reduction-factor", "must be above 1 (3 is usual)")
        _need(0 <= self.grace_s < self.budget_s, "--grace-s", "must be below --budget-s (0 picks budget/rf)")
        _need(all(0 < g < self.budget_s for g in self.earlier_grace_s), "earlier_grace_s",
              "earlier first rungs must lie inside the budget")
        _need(self.report_every_s >= 0, "--report-every-s", "must be 0 (reports at ASHA rungs only) or positive")
        _need(isinstance(self.rung_roundtrip, bool), "--rung-roundtrip",
              f"{self.rung_roundtrip!r} must be true or false")
        _need(isinstance(self.rung_cooldown_fraction, (int, float)) and 0.0 <= self.rung_cooldown_fraction <= 0.5,
              "--rung-cooldown-fraction",
              f"{self.rung_cooldown_fraction} must be 0 (off) to 0.5 (a cooldown of half the steps trained)")
        _need(self.early_stopping in EARLY_STOPPING, "--early-stopping",
              f"{self.early_stopping!r} is not one of {EARLY_STOPPING}")
        _need(self.sampler in SAMPLERS, "--sampler", f"{self.sampler!r} is not one of {SAMPLERS}")
        asha_cuts_nsga2 = self.sampler == "nsga2" and self.early_stopping == "asha" and not self.asha_with_nsga2
        _need(not asha_cuts_nsga2, "--sampler nsga2 with --early-stopping asha",
              "ASHA would stop trials on val_bpb alone, cutting the small artifacts NSGA-II is meant to keep on the "
              "(val_bpb, artifact_bytes) frontier, and NSGA-II learns only from trials that finish; pass "
              "--early-stopping none, or --asha-with-nsga2 to accept that")
        _need(self.logger in LOGGERS, "--logger", f"{self.logger!r} is not one of {LOGGERS[1:]}")
        _need(self.objective in OBJECTIVE_METRICS, "--objective",
              f"{self.objective!r} is not one of {OBJECTIVE_METRICS}")
        _need(self.max_rejections >= 1, "max_rejections", "must be at least 1")
        _need(":" in self.train_fn, "train_fn", "must look like 'package.module:function'")
        for item in self.overrides:
            try:
                parse_override(item)
            except ConfigError as exc:
                raise SettingsError(str(exc)) from None
        _need(self.objective == "val_bpb" or _sets_eval_stride(self.overrides), "--objective",
              "val_bpb_sliding needs the trials to score it: add --set train.eval_stride=N (N > 0, e.g. 64)")
        return self

    def to_json(self) -> str:
        """JSON text that from_json reads back; the first rung is written resolved, so a later default never
        moves a saved search's rungs."""
        return json.dumps({**dataclasses.asdict(self), "grace_s": self.rung_s}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "search.json") -> "SearchSettings":
        """Parse settings written by to_json, rejecting unknown keys."""
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"{where}: unknown key(s) {unknown}; it was written by another version")
        data["overrides"] = tuple(data.get("overrides", ()))
        data["enqueue"] = tuple(data.get("enqueue", ()))
        data["earlier_grace_s"] = tuple(data.get("earlier_grace_s", ()))
        if not data.get("grace_s"):
            # Saved before the first rung was written resolved, when 0 meant budget/rf^2: keep its rungs.
            data["grace_s"] = data.get("budget_s", cls.budget_s) / data.get("reduction_factor", cls.reduction_factor) ** 2
        if "asha_with_nsga2" not in data:
            # Written before the pair was refused: an NSGA-II search under ASHA ran that way; it still loads.
            data["asha_with_nsga2"] = data.get("sampler") == "nsga2"
        settings = cls(**data)
        if "report_every_s" not in data:
            # Written before the setting existed, when the trainer reported every rung_s: keep that, so the
            # report reads its rungs as they were taken and a resumed search reports as it did.
            settings = dataclasses.replace(settings, report_every_s=settings.rung_s)
        return settings.validate()


# Train keys of run configs that are this search's settings now (key -> setting), or that the search sets itself
# (None: report times follow ASHA's rungs and --report-every-s). Saved searches hold them as overrides
# (`--set train.rung_roundtrip=true`); validate() turns those into the settings, once.
MOVED_TRAIN_KEYS = {"rung_roundtrip": "rung_roundtrip", "rung_cooldown_fraction": "rung_cooldown_fraction",
                    "report_at_s": None, "report_every_s": None}


def _moved(override: str) -> tuple[str | None, Any]:
    """(train key, value) of an override that sets a key in MOVED_TRAIN_KEYS, else (None, None)."""
    try:
        (section, key), value = parse_override(override)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    return (key, value) if section == "train" and key in MOVED_TRAIN_KEYS else (None, None)


def _moved_settings(settings: SearchSettings, moved: dict[str, Any]) -> dict[str, Any]:
    """The settings the moved overrides stand for; SettingsError where a flag already says otherwise."""
    changes = {}
    for key, value in moved.items():
        name = MOVED_TRAIN_KEYS[key]
        if name is None:
            continue  # the search sets it; the override never took effect
        default, given = getattr(SearchSettings, name), getattr(settings, name)
        flag = "--" + name.replace("_", "-")
        _need(given == default or given == value, flag,
              f"{given!r} and --set train.{key}={value} disagree; pass only {flag}")
        changes[name] = value
    return changes


def _sets_eval_stride(overrides: tuple[str, ...]) -> bool:
    """Whether the overrides turn on sliding-window evaluation (train.eval_stride > 0)."""
    for item in overrides:
        (section, key), value = parse_override(item)
        if (section, key) == ("train", "eval_stride"):
            return isinstance(value, int) and value > 0
    return False


def _need(ok: bool, flag: str, problem: str) -> None:
    if not ok:
        raise SettingsError(f"{flag}: {problem}")


def is_uri(storage: str) -> bool:
    """True for cloud storage such as s3://bucket/path (not a local directory)."""
    return "://" in storage and not storage.startswith("file://")


def resolve_local(path: str | Path, flag: str, must_exist: bool = False) -> str:
    """Absolute path (trials run in other working directories), optionally checked to exist."""
    p = Path(path).expanduser().resolve()
    if must_exist and not p.exists():
        raise SettingsError(f"{flag}: {p} does not exist; pass an existing path")
    return str(p)
