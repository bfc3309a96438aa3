"""The Optuna bridge: Ray's OptunaSearch, with a hard size gate before launch and honest trial states.

Differences from ray.tune.search.optuna.OptunaSearch, and why:
- suggest(): a config predicted over the byte limit never becomes a Tune trial. It is told to
  Optuna right away (PRUNED at step 0, with constraint value = predicted excess bytes) and the
  searcher asks again, so no trial slot or GPU second is spent and the sampler's constraints_func
  steers it away from that region.
- on_trial_complete(): Ray tells Optuna COMPLETE with the last rung value when ASHA stops a
  trial; here only a trial whose trainable returned its final, exported metrics is COMPLETE.
  ASHA-stopped trials are PRUNED (their rung values were reported with trial.report); failures are
  FAIL with the reason in user attrs; a measured artifact over the limit is COMPLETE but infeasible.
- save()/restore(): the study is re-opened from its database instead of unpickled, so a resumed
  driver sees exactly what the killed one committed.
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
from ray.tune.search.optuna import OptunaSearch

from search import store
from search.settings import SearchSettings, SettingsError
from search.vocabulary import (
    STATUS, REASON, EXCESS, RUNGS, RUNGS_BEFORE_COOLDOWN, TUNE_ID, COMPLETE, PRUNED, FAILED, INFEASIBLE_PREDICTED, INFEASIBLE_MEASURED, RUNNING, INTERRUPTED, REPEAT, STATUSES, LAUNCHED_STATUSES, FINAL_KEY, FAILED_KEY, FAIL_REASON_KEY, NUMBER_KEY, WORKER_TRIAL, OBJECTIVES, RUNG_TIME_ATTRS, FINAL_ATTRS, ENQUEUED_FROM, REQUEUED,
)
from trainer.model_config import ConfigError
from trainer.run_config import RunConfig, apply_overrides, from_dict
from trainer.run_config import load as load_config
from trainer.quant import export_label

log = logging.getLogger(__name__)



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


def excess_bytes_constraint(trial: FrozenTrial) -> list[float]:
    """Optuna constraints_func: bytes over the limit (> 0 infeasible), measured if known, else predicted."""
    return [float(trial.user_attrs.get(EXCESS, 0.0))]


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    """TPE (default) or NSGA-II, both constrained by excess_bytes_constraint."""
    # Optuna 5 marks constraints_func deprecated in favour of Trial.set_constraint (removal in 7.0);
    # it still works and is what Optuna 4 supports, so keep it and keep the warning off the terminal.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*constraints_func.*")
        if settings.sampler == "nsga2":
            # Default population (50) would leave a small search entirely random; aim for >= 2 generations.
            population = max(4, min(50, settings.trials // 2))
            return optuna.samplers.NSGAIISampler(
                population_size=population, seed=settings.seed, constraints_func=excess_bytes_constraint
            )
        return optuna.samplers.TPESampler(seed=settings.seed, constraints_func=excess_bytes_constraint)


def open_study(settings: SearchSettings, create: bool = True) -> optuna.Study:
    """The search's study in <search dir>/study.db (created with the right directions if new)."""
    store.search_dir(settings).mkdir(parents=True, exist_ok=True)
    directions = ["minimize"] * (2 if settings.multi_objective else 1)
    if create:
        return optuna.create_study(
            study_name=settings.name, storage=store.study_storage(settings), sampler=make_sampler(settings),
            pruner=optuna.pruners.NopPruner(), directions=directions, load_if_exists=True,
        )
    return optuna.load_study(study_name=settings.name, storage=store.study_storage(settings),
                             sampler=make_sampler(settings))


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
    """Define-by-run function for OptunaSearch: space.suggest + size prediction, recorded as user attrs."""

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


class RecurrenceSearcher(OptunaSearch):
    """OptunaSearch over a recurrence space with a hard size gate and truthful PRUNED/FAIL states."""

    def __init__(self, settings: SearchSettings, space_loader: str = DEFAULT_SPACE_LOADER,
                 launch_until: float | None = None):
        self._settings = settings
        # time.time() after which no new trial is launched (--drain-after-s); trials in flight run to their end.
        self._launch_until = launch_until
        metric = list(OBJECTIVES) if settings.multi_objective else OBJECTIVES[0]
        mode = ["min", "min"] if settings.multi_objective else "min"
        super().__init__(
            space=SpaceDefineByRun(settings, space_loader), metric=metric, mode=mode,
            sampler=make_sampler(settings), study_name=settings.name,
            storage=store.study_storage(settings),
        )
        self._rungs: dict[str, list[list[float]]] = {}
        self._rungs_before: dict[str, list[list[float]]] = {}  # before each rung's cooldown, if any
        self.rejected = 0
        self.repeats = 0

    # ---- persistence -------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # Trials are stored as numbers and the study re-opened from the database on load.
        state["_ot_trials"] = {tid: t.number for tid, t in self._ot_trials.items()}
        state["_ot_study"] = None
        state["_sampler"] = None
        state["_launch_until"] = None  # a deadline belongs to one driver, never to a resumed one
        return state

    def __setstate__(self, state: dict) -> None:
        numbers = state.pop("_ot_trials")
        state.setdefault("repeats", 0)  # a searcher saved before repeats were refused
        state.setdefault("_rungs_before", {})  # ... or before rung cooldowns
        state.setdefault("_launch_until", None)  # ... or before --drain-after-s
        self.__dict__.update(state)
        self._sampler = make_sampler(self._settings)
        self._ot_study = open_study(self._settings)
        self._ot_trials = {tid: self._trial_by_number(n) for tid, n in numbers.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def _trial_by_number(self, number: int) -> optuna.Trial:
        study = self._ot_study
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        return optuna.Trial(study, trial_id)

    # ---- suggestion with the size gate -------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self._ot_trials:  # Tune asks again for a trial it already has (restore)
            ot_trial = self._ot_trials[trial_id]
            attrs = self._ot_study._storage.get_trial_user_attrs(ot_trial._trial_id)
            return self._tune_config(ot_trial.number, attrs["run_config"], attrs["summary"])
        if self._launch_until is not None and time.time() >= self._launch_until:
            return Searcher.FINISHED  # drained: Tune launches nothing more and ends when the trials in flight do
        self._space.bundle()  # load the space file outside the timed define-by-run call
        for _ in range(self._settings.max_rejections):
            ot_trial = self._ot_study.ask()
            try:
                out = self._suggest_from_define_by_run_func(self._space, ot_trial)
            except optuna.TrialPruned as exc:  # a space that gates sizes itself
                self.rejected += 1
                ot_trial.set_user_attr(EXCESS, max(1, -int(ot_trial.user_attrs.get("size_margin_bytes", -1))))
                self._finish(ot_trial, TrialState.PRUNED, None, INFEASIBLE_PREDICTED, f"space pruned it: {exc}")
                continue
            except ConfigError as exc:
                # A config the trainer would reject is a failure found for free: record it, ask again.
                self._finish(ot_trial, TrialState.FAIL, None, FAILED, f"bad config: {exc}")
                continue
            if not out["fits"]:
                self.rejected += 1
                excess = ot_trial.user_attrs[EXCESS]
                self._finish(ot_trial, TrialState.PRUNED, None, INFEASIBLE_PREDICTED,
                             f"predicted {excess:,} bytes over the limit (incl. safety margin); never launched")
                continue
            twin = self._launched_twin(out["run"], ot_trial.number)
            if twin is not None:
                # TPE re-proposes its best point (a 180 s search trained one config three times in 17 launches, all
                # at the same seed). Told as PRUNED, so the sampler moves on instead of drawing it again.
                self.repeats += 1
                self._finish(ot_trial, TrialState.PRUNED, None, REPEAT,
                             f"same run config as trial {twin}; never launched")
                continue
            ot_trial.set_user_attr(STATUS, RUNNING)
            ot_trial.set_user_attr(TUNE_ID, trial_id)
            self._ot_trials[trial_id] = ot_trial
            return self._tune_config(ot_trial.number, out["run"], out["summary"])
        log.error("search %s: %d configs in a row were predicted over the limit, invalid or repeats of launched "
                  "trials; stopping the search. Narrow the space (smaller model_dim/unique_blocks/quant_bits) so "
                  "most configs fit, or request fewer trials than it has points.",
                  self._settings.name, self._settings.max_rejections)
        return Searcher.FINISHED

    def _launched_twin(self, run: dict, number: int) -> int | None:
        """The number of a launched trial with exactly this run config (seed included), if any."""
        run = json.loads(json.dumps(run))  # as the study stores it (tuples become lists)
        for t in self._ot_study.get_trials(deepcopy=False):
            if (t.number != number and t.user_attrs.get(STATUS) in LAUNCHED_STATUSES
                    and _as_read_now(t.user_attrs.get("run_config")) == run):
                return t.number
        return None

    @staticmethod
    def _tune_config(number: int, run: dict, summary: str) -> dict:
        return {"run": run, NUMBER_KEY: number, "summary": summary}

    # ---- results --------------------------------------------------------------------------------
    def _lookup(self, trial_id: str, result: dict | None) -> optuna.Trial | None:
        """The Optuna trial for a Tune trial, re-attached by number if the saved mapping predates it."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            number = (result or {}).get(NUMBER_KEY, (result or {}).get(f"config/{NUMBER_KEY}"))
            if number is None:
                return None
            ot_trial = self._trial_by_number(int(number))
            self._ot_trials[trial_id] = ot_trial
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if frozen.state.is_finished():
            # Finished in the study already: a resumed driver whose Tune state predates the finish reruns it
            # from its last checkpoint; the recorded outcome stands and the rerun's results are ignored.
            self._completed_trials.add(trial_id)
            return None
        if frozen.user_attrs.get(STATUS) == INTERRUPTED:  # a resumed driver runs it again
            ot_trial.set_user_attr(STATUS, RUNNING)
        return ot_trial

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._lookup(trial_id, result)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        if result.get(FINAL_KEY) or result.get(FAILED_KEY) or "train_s" not in result:
            return
        self._record_rung(trial_id, ot_trial, result)

    def _record_rung(self, trial_id: str, ot_trial: optuna.Trial, result: dict) -> None:
        value, train_s = result.get("val_bpb"), float(result["train_s"])
        if value is None or not math.isfinite(float(value)):
            return
        rungs = self._rungs.setdefault(trial_id, [])
        if rungs and rungs[-1][0] >= round(train_s, 3):
            return  # already recorded (Tune passes the stopping result to on_trial_complete again)
        rungs.append([round(train_s, 3), float(value)])
        ot_trial.set_user_attr(RUNGS, rungs)
        before = result.get("val_bpb_before_cooldown")
        if before is not None:
            self._rungs_before.setdefault(trial_id, []).append([round(train_s, 3), float(before)])
            ot_trial.set_user_attr(RUNGS_BEFORE_COOLDOWN, self._rungs_before[trial_id])
        if not self._settings.multi_objective:  # Optuna has no intermediate values for multi-objective
            step = int(round(train_s * 1000))  # step = training milliseconds: one time axis for all trials
            if step not in self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values:
                ot_trial.report(float(value), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._lookup(trial_id, result)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        self._completed_trials.add(trial_id)
        result = result or {}
        if result.get(WORKER_TRIAL) is not None:  # every report carries it, the stopping one of a pruned trial too
            ot_trial.set_user_attr(WORKER_TRIAL, int(result[WORKER_TRIAL]))
        if "time_total_s" in result:
            device_s = float(result["time_total_s"])
            ot_trial.set_user_attr("device_s", device_s)
            ot_trial.set_user_attr("gpu_s", device_s * self._settings.gpu_share)
        if error:
            self._finish(ot_trial, TrialState.FAIL, None, FAILED,
                         "trial raised in Tune (see error.txt in its trial folder)")
        elif result.get(FAILED_KEY):
            self._finish(ot_trial, TrialState.FAIL, None, FAILED, str(result.get(FAIL_REASON_KEY, "unknown")))
        elif result.get(FINAL_KEY):
            self._finish_final(ot_trial, result)
        elif "train_s" in result:
            # ASHA's stopping result goes straight to on_trial_complete, never to on_trial_result.
            self._record_rung(trial_id, ot_trial, result)
            for key in RUNG_TIME_ATTRS:
                if result.get(key) is not None:
                    ot_trial.set_user_attr(key, result[key])
            self._finish(ot_trial, TrialState.PRUNED, None, PRUNED,
                         f"stopped by ASHA at {float(result['train_s']):.1f} training s")
        else:
            self._finish(ot_trial, TrialState.FAIL, None, FAILED, "stopped before its first report")

    def _finish_final(self, ot_trial: optuna.Trial, result: dict) -> None:
        for key in FINAL_ATTRS:
            if key in result and result[key] is not None:
                ot_trial.set_user_attr(key, result[key])
        objective = self._settings.objective  # val_bpb, or val_bpb_sliding (--objective)
        val_bpb, size = result.get(objective), result.get("artifact_bytes")
        if val_bpb is None or size is None or not math.isfinite(float(val_bpb)):
            self._finish(ot_trial, TrialState.FAIL, None, FAILED, f"final {objective} is {val_bpb}")
            return
        # The measured size replaces the prediction in the constraint, so Optuna learns from it.
        excess = int(size) - self._settings.limit_bytes
        ot_trial.set_user_attr(EXCESS, excess)
        values = [float(val_bpb), float(size)] if self._settings.multi_objective else float(val_bpb)
        if excess > 0 or result.get("over_limit"):
            self._finish(ot_trial, TrialState.COMPLETE, values, INFEASIBLE_MEASURED,
                         f"measured artifact {int(size):,} bytes is {excess:,} over the limit")
        else:
            self._finish(ot_trial, TrialState.COMPLETE, values, COMPLETE, "")

    def _finish(self, ot_trial: optuna.Trial, state: TrialState, values: Any, status: str, reason: str) -> None:
        ot_trial.set_user_attr(STATUS, status)
        ot_trial.set_user_attr(REASON, reason)
        try:
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:  # never let bookkeeping stop the search; the attrs still say what happened
            log.warning("could not tell Optuna trial %d as %s: %s", ot_trial.number, state.name, exc)


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
    study = open_study(settings)
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get(TUNE_ID) in tune_ids]
    for t in running:
        study._storage.set_trial_user_attr(t._trial_id, STATUS, INTERRUPTED)
        study._storage.set_trial_user_attr(t._trial_id, REASON, reason)
    return len(running)


def _fail_running(study: optuna.Study, t: FrozenTrial, reason: str) -> None:
    """Record a RUNNING trial that will never report as FAIL, with the reason in its user attrs."""
    study._storage.set_trial_user_attr(t._trial_id, STATUS, FAILED)
    study._storage.set_trial_user_attr(t._trial_id, REASON, reason)
    study.tell(t.number, state=TrialState.FAIL)


def fail_orphans(settings: SearchSettings, reason: str, keep_tune_ids: set[str] = frozenset()) -> int:
    """Mark Optuna trials still RUNNING (their driver died and Tune did not resume them) as FAIL, except those
    whose Tune trial is in keep_tune_ids (interrupted by this driver's stop, resumable)."""
    study = open_study(settings)
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
    study = open_study(settings)
    requeued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        launched = bool(t.user_attrs.get(TUNE_ID))
        study._storage.set_trial_user_attr(t._trial_id, REQUEUED, launched)
        _fail_running(study, t, reason if launched else "never launched")
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
    "prepare_config", "summarize", "fail_orphans", "mark_interrupted", "load_space_bundle", "STATUSES",
    "space_points", "enqueue_points", "requeue_in_flight", "launched_count",
]
