"""The Optuna bridge: a Ray Tune Searcher that drives an Optuna study through Optuna's public ask/tell API, with a
hard size gate before launch and honest trial states.

- suggest(): a config predicted over the byte limit never becomes a Tune trial. It is told to Optuna right away
  (PRUNED, with its constraint = predicted excess bytes) and the searcher asks again, so no trial slot or GPU
  second is spent and the sampler steers away from that region. A config identical to a launched trial's (seed
  included) is never launched again either (PRUNED as a repeat).
- on_trial_complete(): only a trial whose trainable returned its final, exported metrics is COMPLETE.
  ASHA-stopped trials are PRUNED (their rung values were reported with trial.report); failures are FAIL with the
  reason in user attrs; a measured artifact over the limit is COMPLETE but infeasible.
- Constraints: each trial records its excess bytes (measured if known, else predicted; > 0 infeasible) with
  Trial.set_constraint just before it is told, which is what TPE and NSGA-II read.
- save()/restore(): the study is re-opened from its database instead of unpickled, so a resumed driver sees
  exactly what the killed one committed; trials it inherits are re-attached by number (search.tune.private_api).
- The sampler is pinned (make_sampler) and its settings are recorded in the study (SAMPLER_ATTR).
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import pickle
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from search import store
from search.settings import SearchSettings, SettingsError
from search.tune.private_api import attach_trial
from search.vocabulary import (
    STATUS, REASON, EXCESS, RUNGS, RUNGS_BEFORE_COOLDOWN, TUNE_ID, COMPLETE, PRUNED, FAILED, INFEASIBLE_PREDICTED,
    INFEASIBLE_MEASURED, RUNNING, INTERRUPTED, REPEAT, STATUSES, LAUNCHED_STATUSES, FINAL_KEY, FAILED_KEY,
    FAIL_REASON_KEY, NUMBER_KEY, WORKER_TRIAL, OBJECTIVES, RUNG_TIME_ATTRS, FINAL_ATTRS, ENQUEUED_FROM, REQUEUED,
    SAMPLER,
)
from trainer.model_config import ConfigError
from trainer.run_config import RunConfig, apply_overrides, from_dict
from trainer.run_config import load as load_config
from trainer.quant import export_label

log = logging.getLogger(__name__)

CONSTRAINT = "excess_bytes"  # the trials' one Optuna constraint: bytes over the limit (> 0 infeasible)
SAMPLER_ATTR = SAMPLER  # study user attr: the sampler and its settings (sampler_settings), and from which trial
TPE_STARTUP_TRIALS = 10  # finished trials (size-rejected ones count) sampled at random before TPE models them


class Space(Protocol):
    """What the searcher needs from spaces.space.SearchSpace."""

    def suggest(self, trial: optuna.Trial) -> RunConfig: ...

    def assignment_for(self, cfg: RunConfig) -> dict[str, Any] | None: ...


DEFAULT_SPACE_LOADER = "search.tune.searcher:load_space_bundle"


def load_space_bundle(space_path: str) -> tuple[Space, Callable[[RunConfig], Any]]:
    """The search space from its YAML and its size prediction (trainer.sizing.size_model.predict)."""
    from spaces.space import load_space

    space = load_space(Path(space_path))
    return space, space.predict


def import_object(spec: str) -> Any:
    """'package.module:attr' -> the object (how settings name plug-in callables)."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def excess_bytes_constraint(trial: FrozenTrial | optuna.Trial) -> list[float]:
    """A trial's constraint values: bytes over the limit (> 0 infeasible), measured if known, else predicted."""
    return [float(trial.user_attrs.get(EXCESS, 0.0))]


def sampler_settings(settings: SearchSettings) -> dict:
    """The sampler's class and every setting that shapes its proposals (recorded in the study and the report)."""
    if settings.sampler == "nsga2":
        # Default population (50) would leave a small search entirely random; aim for >= 2 generations.
        return {"name": "NSGAIISampler", "population_size": max(4, min(50, settings.trials // 2)),
                "seed": settings.seed}
    # Pinned rather than Optuna's defaults, which differ between releases: multivariate TPE decomposed into the
    # groups of parameters that occur together (the space is conditional), and a constant liar so that trials
    # running in parallel are not proposed the same point.
    return {"name": "TPESampler", "multivariate": True, "group": True, "constant_liar": True,
            "n_startup_trials": TPE_STARTUP_TRIALS, "seed": settings.seed}


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    """TPE (default) or NSGA-II with the settings of sampler_settings; both read each trial's constraint."""
    kwargs = sampler_settings(settings)
    name = kwargs.pop("name")
    if name == "NSGAIISampler":
        return optuna.samplers.NSGAIISampler(**kwargs)
    with warnings.catch_warnings():  # `group` is marked experimental; it is chosen on purpose
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, message=".*group.*")
        return optuna.samplers.TPESampler(**kwargs)


def record_sampler(study: optuna.Study, settings: SearchSettings) -> None:
    """Record the sampler in the study once (a study from before this records it from its current trial on)."""
    if SAMPLER_ATTR not in study.user_attrs:
        study.set_user_attr(SAMPLER_ATTR, {**sampler_settings(settings), "optuna": optuna.__version__,
                                           "from_trial": len(study.get_trials(deepcopy=False))})


def open_study(settings: SearchSettings, create: bool = True) -> optuna.Study:
    """The search's study (created with the right directions if new and `create`; else it must exist)."""
    if not create:
        return store.load_study(settings, sampler=make_sampler(settings))
    directions = ["minimize"] * (2 if settings.multi_objective else 1)
    study = optuna.create_study(
        study_name=settings.name, storage=store.study_storage(settings), sampler=make_sampler(settings),
        pruner=optuna.pruners.NopPruner(), directions=directions, load_if_exists=True,
    )
    record_sampler(study, settings)
    return store.read_trials(settings, study)


def prepare_config(cfg: RunConfig, settings: SearchSettings) -> RunConfig:
    """Apply the search's overrides, its budget and the hard byte limit (report times: search.tune.rungs)."""
    data = apply_overrides(cfg.to_dict(), list(settings.overrides))
    data["train"]["budget_s"] = settings.budget_s
    # The limit is the challenge's, not the space's: a space or override cannot raise it.
    data["export"]["limit_bytes"] = settings.limit_bytes
    return from_dict(data, where="suggested config")


def summarize(cfg: RunConfig) -> str:
    """Short human label of a config's shape and schedule."""
    m = cfg.model
    order = m.schedule_order
    untie = m.untie_mlp if isinstance(m.untie_mlp, str) else "pos" + ",".join(map(str, m.untie_mlp))
    sched = "".join(str(b) if b < 10 else f"[{b}]" for b in order)
    return (f"d{m.model_dim} h{m.num_heads}/{m.num_kv_heads} mlp{m.mlp_mult:g} u{m.unique_blocks} "
            f"v{len(order)} sched={sched} untie={untie} ds={m.depth_signal} {export_label(cfg.export)}")


class SpaceDefineByRun:
    """Define-by-run function: space.suggest + size prediction, recorded as user attrs."""

    def __init__(self, settings: SearchSettings, loader: str):
        self.settings, self.loader = settings, loader
        self._bundle: tuple[Space, Callable] | None = None

    def __getstate__(self) -> dict:
        # The loaded space is rebuilt from its file after unpickling; it need not be picklable.
        return {"settings": self.settings, "loader": self.loader, "_bundle": None}

    def bundle(self) -> tuple[Space, Callable]:
        if self._bundle is None:
            self._bundle = import_object(self.loader)(self.settings.space)
        return self._bundle

    def __call__(self, trial: optuna.Trial) -> dict:
        space, predict = self.bundle()
        # The space could prune over-limit configs itself, but the gate must see the config *after* the
        # search's overrides, so ask for the raw config and predict here.
        if "require_fit" in inspect.signature(space.suggest).parameters:
            raw = space.suggest(trial, require_fit=False)
        else:
            raw = space.suggest(trial)
        cfg = prepare_config(raw, self.settings)
        pred = predict(cfg)
        # Excess over the limit including the size model's safety margin: > 0 exactly when not pred.fits.
        excess = -int(pred.margin_bytes)
        if not pred.fits:
            excess = max(excess, 1)
        attrs = {
            "run_config": cfg.to_dict(),
            "summary": summarize(cfg),
            "unique_params": int(pred.unique_params),
            "virtual_layers": len(cfg.model.schedule_order),
            "predicted_artifact_bytes": int(pred.predicted_artifact_bytes),
            "predicted_model_bytes": int(pred.predicted_model_bytes),
            "safety_margin_bytes": int(pred.safety_margin_bytes),
            "limit_bytes": int(pred.limit_bytes),
            "predicted_fits": bool(pred.fits),
            EXCESS: excess,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return {"run": attrs["run_config"], "summary": attrs["summary"], "fits": bool(pred.fits)}


def _as_read_now(run: dict | None) -> dict | None:
    """A stored run config as this version writes it (an older trial's may hold keys that moved out of it)."""
    try:
        return from_dict(run).to_dict() if run is not None else None
    except ConfigError:
        return run


class RecurrenceSearcher(Searcher):
    """Tune searcher over a recurrence space, on an Optuna study: hard size gate, truthful PRUNED/FAIL states."""

    def __init__(self, settings: SearchSettings, space_loader: str = DEFAULT_SPACE_LOADER,
                 launch_until: float | None = None):
        metric = list(OBJECTIVES) if settings.multi_objective else OBJECTIVES[0]
        mode = ["min", "min"] if settings.multi_objective else "min"
        super().__init__(metric=metric, mode=mode)
        self.settings = settings
        self.space = SpaceDefineByRun(settings, space_loader)
        # time.time() after which no new trial is launched (--drain-after-s); trials in flight run to their end.
        self.launch_until = launch_until
        self.study = open_study(settings)
        self.in_flight: dict[str, optuna.Trial] = {}  # Tune trial id -> its Optuna trial
        self.told: set[str] = set()  # Tune trial ids whose outcome Optuna has
        self.rungs: dict[str, list[list[float]]] = {}
        self.rungs_before: dict[str, list[list[float]]] = {}  # before each rung's cooldown, if any
        self.rejected = 0
        self.repeats = 0

    # ---- persistence -------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # Trials are stored as numbers and the study re-opened from its database on load.
        state["in_flight"] = {tid: t.number for tid, t in self.in_flight.items()}
        state["study"] = None
        state["launch_until"] = None  # a deadline belongs to one driver, never to a resumed one
        return state

    def __setstate__(self, state: dict) -> None:
        state = _current_state(state)
        numbers = state.pop("in_flight")
        self.__dict__.update(state)
        self.study = open_study(self.settings, create=False)
        record_sampler(self.study, self.settings)
        self.in_flight = {tid: attach_trial(self.study, n) for tid, n in numbers.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def _stored(self, number: int) -> FrozenTrial:
        """The trial as the study holds it now."""
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    # ---- suggestion with the size gate -------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.in_flight:  # Tune asks again for a trial it already has (restore)
            trial = self.in_flight[trial_id]
            attrs = self._stored(trial.number).user_attrs
            return self._tune_config(trial.number, attrs["run_config"], attrs["summary"])
        if self.launch_until is not None and time.time() >= self.launch_until:
            return Searcher.FINISHED  # drained: Tune launches nothing more and ends when the trials in flight do
        for _ in range(self.settings.max_rejections):
            trial = self.study.ask()
            try:
                out = self.space(trial)
            except optuna.TrialPruned as exc:  # a space that gates sizes itself
                self.rejected += 1
                trial.set_user_attr(EXCESS, max(1, -int(trial.user_attrs.get("size_margin_bytes", -1))))
                self._finish(trial, TrialState.PRUNED, None, INFEASIBLE_PREDICTED, f"space pruned it: {exc}")
                continue
            except ConfigError as exc:
                # A config the trainer would reject is a failure found for free: record it, ask again.
                self._finish(trial, TrialState.FAIL, None, FAILED, f"bad config: {exc}")
                continue
            if not out["fits"]:
                self.rejected += 1
                excess = trial.user_attrs[EXCESS]
                self._finish(trial, TrialState.PRUNED, None, INFEASIBLE_PREDICTED,
                             f"predicted {excess:,} bytes over the limit (incl. safety margin); never launched")
                continue
            twin = self._launched_twin(out["run"], trial.number)
            if twin is not None:
                # TPE re-proposes its best point (a 180 s search trained one config three times in 17 launches, all
                # at the same seed). Told as PRUNED, so the sampler moves on instead of drawing it again.
                self.repeats += 1
                self._finish(trial, TrialState.PRUNED, None, REPEAT, f"same run config as trial {twin}; never launched")
                continue
            trial.set_user_attr(STATUS, RUNNING)
            trial.set_user_attr(TUNE_ID, trial_id)
            self.in_flight[trial_id] = trial
            return self._tune_config(trial.number, out["run"], out["summary"])
        log.error("search %s: %d configs in a row were predicted over the limit, invalid or repeats of launched "
                  "trials; stopping the search. Narrow the space (smaller model_dim/unique_blocks/quant_bits) so "
                  "most configs fit, or request fewer trials than it has points.",
                  self.settings.name, self.settings.max_rejections)
        return Searcher.FINISHED

    def _launched_twin(self, run: dict, number: int) -> int | None:
        """The number of a launched trial with exactly this run config (seed included), if any."""
        run = json.loads(json.dumps(run))  # as the study stores it (tuples become lists)
        for t in self.study.get_trials(deepcopy=False):
            if (t.number != number and t.user_attrs.get(STATUS) in LAUNCHED_STATUSES
                    and _as_read_now(t.user_attrs.get("run_config")) == run):
                return t.number
        return None

    @staticmethod
    def _tune_config(number: int, run: dict, summary: str) -> dict:
        return {"run": run, NUMBER_KEY: number, "summary": summary}

    # ---- results --------------------------------------------------------------------------------
    def _lookup(self, trial_id: str, result: dict | None) -> optuna.Trial | None:
        """The Optuna trial of a Tune trial, re-attached by number if the saved mapping predates it; None once
        the study has its outcome."""
        trial = self.in_flight.get(trial_id)
        if trial is None:
            number = (result or {}).get(NUMBER_KEY, (result or {}).get(f"config/{NUMBER_KEY}"))
            if number is None:
                return None
            trial = attach_trial(self.study, int(number))
            self.in_flight[trial_id] = trial
        stored = self._stored(trial.number)
        if stored.state.is_finished():
            # Finished in the study already: a resumed driver whose Tune state predates the finish reruns it
            # from its last checkpoint; the recorded outcome stands and the rerun's results are ignored.
            self.told.add(trial_id)
            return None
        if stored.user_attrs.get(STATUS) == INTERRUPTED:  # a resumed driver runs it again
            trial.set_user_attr(STATUS, RUNNING)
        return trial

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self._lookup(trial_id, result)
        if trial is None or trial_id in self.told:
            return
        if result.get(FINAL_KEY) or result.get(FAILED_KEY) or "train_s" not in result:
            return
        self._record_rung(trial_id, trial, result)

    def _record_rung(self, trial_id: str, trial: optuna.Trial, result: dict) -> None:
        value, train_s = result.get("val_bpb"), float(result["train_s"])
        if value is None or not math.isfinite(float(value)):
            return
        rungs = self.rungs.setdefault(trial_id, [])
        if rungs and rungs[-1][0] >= round(train_s, 3):
            return  # already recorded (Tune passes the stopping result to on_trial_complete again)
        rungs.append([round(train_s, 3), float(value)])
        trial.set_user_attr(RUNGS, rungs)
        before = result.get("val_bpb_before_cooldown")
        if before is not None:
            self.rungs_before.setdefault(trial_id, []).append([round(train_s, 3), float(before)])
            trial.set_user_attr(RUNGS_BEFORE_COOLDOWN, self.rungs_before[trial_id])
        if not self.settings.multi_objective:  # Optuna has no intermediate values for multi-objective
            step = int(round(train_s * 1000))  # step = training milliseconds: one time axis for all trials
            if step not in self._stored(trial.number).intermediate_values:
                trial.report(float(value), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._lookup(trial_id, result)
        if trial is None or trial_id in self.told:
            return
        self.told.add(trial_id)
        result = result or {}
        if result.get(WORKER_TRIAL) is not None:  # every report carries it, the stopping one of a pruned trial too
            trial.set_user_attr(WORKER_TRIAL, int(result[WORKER_TRIAL]))
        if "time_total_s" in result:
            device_s = float(result["time_total_s"])
            trial.set_user_attr("device_s", device_s)
            trial.set_user_attr("gpu_s", device_s * self.settings.gpu_share)
        if error:
            self._finish(trial, TrialState.FAIL, None, FAILED,
                         "trial raised in Tune (see error.txt in its trial folder)")
        elif result.get(FAILED_KEY):
            self._finish(trial, TrialState.FAIL, None, FAILED, str(result.get(FAIL_REASON_KEY, "unknown")))
        elif result.get(FINAL_KEY):
            self._finish_final(trial, result)
        elif "train_s" in result:
            # ASHA's stopping result goes straight to on_trial_complete, never to on_trial_result.
            self._record_rung(trial_id, trial, result)
            for key in RUNG_TIME_ATTRS:
                if result.get(key) is not None:
                    trial.set_user_attr(key, result[key])
            self._finish(trial, TrialState.PRUNED, None, PRUNED,
                         f"stopped by ASHA at {float(result['train_s']):.1f} training s")
        else:
            self._finish(trial, TrialState.FAIL, None, FAILED, "stopped before its first report")

    def _finish_final(self, trial: optuna.Trial, result: dict) -> None:
        for key in FINAL_ATTRS:
            if key in result and result[key] is not None:
                trial.set_user_attr(key, result[key])
        objective = self.settings.objective  # val_bpb, or val_bpb_sliding (--objective)
        val_bpb, size = result.get(objective), result.get("artifact_bytes")
        if val_bpb is None or size is None or not math.isfinite(float(val_bpb)):
            self._finish(trial, TrialState.FAIL, None, FAILED, f"final {objective} is {val_bpb}")
            return
        # The measured size replaces the prediction in the constraint, so Optuna learns from it.
        excess = int(size) - self.settings.limit_bytes
        trial.set_user_attr(EXCESS, excess)
        values = [float(val_bpb), float(size)] if self.settings.multi_objective else float(val_bpb)
        if excess > 0 or result.get("over_limit"):
            self._finish(trial, TrialState.COMPLETE, values, INFEASIBLE_MEASURED,
                         f"measured artifact {int(size):,} bytes is {excess:,} over the limit")
        else:
            self._finish(trial, TrialState.COMPLETE, values, COMPLETE, "")

    def _finish(self, trial: optuna.Trial, state: TrialState, values: Any, status: str, reason: str) -> None:
        trial.set_user_attr(STATUS, status)
        trial.set_user_attr(REASON, reason)
        try:
            if state in (TrialState.COMPLETE, TrialState.PRUNED):  # the states samplers learn from
                trial.set_constraint(CONSTRAINT, excess_bytes_constraint(trial)[0])
            self.study.tell(trial, values, state=state)
        except Exception as exc:  # never let bookkeeping stop the search; the attrs still say what happened
            log.warning("could not tell Optuna trial %d as %s: %s", trial.number, state.name, exc)


# Attributes of a searcher pickled by the earlier OptunaSearch-based class, by their names now (a search started
# before the change resumes with it). The rest of OptunaSearch's state is rebuilt from the settings.
_EARLIER_NAMES = {"_settings": "settings", "_space": "space", "_launch_until": "launch_until",
                  "_ot_trials": "in_flight", "_completed_trials": "told", "_rungs": "rungs",
                  "_rungs_before": "rungs_before", "rejected": "rejected", "repeats": "repeats",
                  "_metric": "_metric", "_mode": "_mode"}


def _current_state(state: dict) -> dict:
    """A pickled searcher's state under the current attribute names (and defaults for ones added since)."""
    if "_ot_trials" in state:
        state = {new: state[old] for old, new in _EARLIER_NAMES.items() if old in state}
    return {"rungs_before": {}, "launch_until": None, "repeats": 0, "rejected": 0, "told": set(), "rungs": {},
            **state}


def space_loader_of(settings: SearchSettings) -> str:
    """The space loader recorded for this search (tests may plug in another)."""
    return settings.extra.get("space_loader", DEFAULT_SPACE_LOADER)


def space_points(settings: SearchSettings, files: list[str], skip_outside: bool = False) -> list[tuple[str, dict]]:
    """(file, assignment) of each run config file that is a point of the search's space. A file outside the
    space raises SettingsError naming it, or is left out with skip_outside (e.g. presets of another space)."""
    if not files:
        return []
    space, _ = import_object(space_loader_of(settings))(settings.space)
    points = []
    for path in files:
        assignment = space.assignment_for(load_config(Path(path)))
        if assignment is None and not skip_outside:
            raise SettingsError(
                f"--enqueue {path}: its model and export sections are no point of the space {settings.space}; "
                "add its shape to the space, or drop it from --enqueue")
        if assignment is not None:
            points.append((str(path), assignment))
    return points


def enqueue_points(settings: SearchSettings, points: list[tuple[str, dict]]) -> None:
    """Queue the points as the study's next trials: the sampler hands them out first, then proposes its own."""
    study = open_study(settings)
    for path, assignment in points:
        study.enqueue_trial(assignment, user_attrs={ENQUEUED_FROM: Path(path).stem}, skip_if_exists=True)


def mark_interrupted(settings: SearchSettings, reason: str, tune_ids: set[str]) -> int:
    """Label RUNNING trials whose Tune trial is in tune_ids as interrupted; they stay RUNNING for `resume`."""
    study = open_study(settings, create=False)
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get(TUNE_ID) in tune_ids]
    for t in running:
        trial = attach_trial(study, t.number)
        trial.set_user_attr(STATUS, INTERRUPTED)
        trial.set_user_attr(REASON, reason)
    return len(running)


def _fail_running(study: optuna.Study, t: FrozenTrial, reason: str, **attrs: Any) -> None:
    """Record a RUNNING trial that will never report as FAIL, with the reason (and attrs) in its user attrs."""
    trial = attach_trial(study, t.number)
    for key, value in {**attrs, STATUS: FAILED, REASON: reason}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=TrialState.FAIL)


def fail_orphans(settings: SearchSettings, reason: str, keep_tune_ids: set[str] = frozenset()) -> int:
    """Mark Optuna trials still RUNNING (their driver died and Tune did not resume them) as FAIL, except those
    whose Tune trial is in keep_tune_ids (interrupted by this driver's stop, resumable)."""
    study = open_study(settings, create=False)
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(TUNE_ID) in keep_tune_ids:
            continue
        _fail_running(study, t, reason)
        count += 1
    return count


def requeue_in_flight(settings: SearchSettings, reason: str) -> list[int]:
    """For a resume from the study alone: mark every trial still RUNNING as FAIL (reason given) and queue each
    launched one's parameters again, so it starts from scratch first; return the numbers queued again."""
    study = open_study(settings, create=False)
    requeued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        launched = bool(t.user_attrs.get(TUNE_ID))
        _fail_running(study, t, reason if launched else "never launched", **{REQUEUED: launched})
        if launched:  # after the FAIL, so the searcher does not refuse it as a repeat of a launched config
            attrs = {ENQUEUED_FROM: f"restart of #{t.number}"}
            study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
            requeued.append(t.number)
    return requeued


def launched_count(settings: SearchSettings) -> int:
    """Trials handed to Tune so far, less those started again as new trials (each counts once)."""
    trials = open_study(settings, create=False).get_trials(deepcopy=False)
    return sum(1 for t in trials if t.user_attrs.get(TUNE_ID) and not t.user_attrs.get(REQUEUED))


__all__ = [
    "RecurrenceSearcher", "SpaceDefineByRun", "excess_bytes_constraint", "make_sampler", "open_study",
    "sampler_settings", "record_sampler", "SAMPLER_ATTR", "CONSTRAINT",
    "prepare_config", "summarize", "fail_orphans", "mark_interrupted", "load_space_bundle", "STATUSES",
    "space_points", "enqueue_points", "requeue_in_flight", "launched_count",
]
