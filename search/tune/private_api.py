"""The one place that reaches into Optuna's and Ray's private parts, for the two jobs no public API does.

- Optuna: a `Trial` handle for a trial that another process (or an earlier driver) asked for. Optuna hands out
  `Trial` objects only from `study.ask()`; a resumed driver must still report rungs, set attrs and tell the
  outcome of the trials it inherited by number.
- Ray Tune: how a failed trial actor is handled (patch_trial_failures): Ray raises an OutOfMemoryError from a
  trial whose worker its memory monitor killed, which Tune's actor manager does not expect and lets end the
  driver; the patch lets the caller turn it into the actor death Tune handles, and see why each trial failed.
- Ray Tune: whether Tune has asked the running function trainable to end (its session's stop_event). Function
  trainables report synchronously, so Tune's stop wakes the trial inside `tune.report`, which raises SystemExit;
  the flag is what a trainer polling should_stop between reports reads.

Every private name used is listed in PRIVATE_NAMES and checked by tests/test_private_api.py; when one moves,
these functions raise PrivateApiMoved naming it (and the versions installed) instead of misbehaving.
"""
from __future__ import annotations

from typing import Any, Callable

import optuna

# (owner, private name): what each function below relies on.
PRIVATE_NAMES = (
    ("optuna.Study", "_storage"),
    ("optuna.Study", "_study_id"),
    ("optuna storage", "get_trial_id_from_study_id_trial_number"),
    ("ray.train._internal.session", "get_session"),
    ("ray.train._internal.session._TrainSession", "stop_event"),
    ("ray.air.execution._internal.actor_manager.RayActorManager", "_actor_task_failed"),
    ("ray.tune.execution.tune_controller.TuneController", "_process_trial_failure"),
)


class PrivateApiMoved(RuntimeError):
    """A private Optuna/Ray name this project relies on is gone; search/tune/private_api.py needs updating."""


def _moved(owner: str, name: str, exc: BaseException) -> PrivateApiMoved:
    import ray

    return PrivateApiMoved(
        f"{owner}.{name} is gone in optuna {optuna.__version__} / ray {ray.__version__} ({exc}); "
        "update search/tune/private_api.py, or install the versions pyproject.toml allows")


def attach_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """A Trial handle for the study's trial `number` (asked by any process): set attrs, report, tell."""
    try:
        storage, study_id = study._storage, study._study_id
    except AttributeError as exc:
        raise _moved("optuna.Study", "_storage/_study_id", exc) from None
    try:
        lookup = storage.get_trial_id_from_study_id_trial_number
    except AttributeError as exc:
        raise _moved("optuna storage", "get_trial_id_from_study_id_trial_number", exc) from None
    return optuna.Trial(study, lookup(study_id, number))


def get_session() -> Any:
    """Ray's session of the function trainable running in this thread (None outside one); its `stop_event` is
    set once Tune asks the trial to end."""
    try:
        from ray.train._internal.session import get_session as ray_get_session
    except ImportError as exc:
        raise _moved("ray.train._internal.session", "get_session", exc) from None
    return ray_get_session()


def tune_stop_requested() -> bool:
    """True once Tune has asked this trial's function to end (ASHA stopped it, or the driver stopped)."""
    session = get_session()
    if session is None:
        return False
    try:
        return session.stop_event.is_set()
    except AttributeError as exc:
        raise _moved("ray.train._internal.session._TrainSession", "stop_event", exc) from None


def patch_trial_failures(convert: Callable[[BaseException], BaseException],
                         observe: Callable[[str, BaseException], None]) -> None:
    """Pass every error a trial actor raises through convert() before Tune's actor manager sees it, and call
    observe(trial_id, error) before Tune fails a trial; once per process."""
    try:
        from ray.air.execution._internal.actor_manager import RayActorManager
        from ray.tune.execution.tune_controller import TuneController

        task_failed = RayActorManager._actor_task_failed
        trial_failed = TuneController._process_trial_failure
    except (ImportError, AttributeError) as exc:
        raise _moved("RayActorManager/TuneController", "_actor_task_failed/_process_trial_failure", exc) from None
    if getattr(task_failed, "_converts_errors", False):
        return

    def actor_task_failed(self, tracked_actor_task, exception):
        return task_failed(self, tracked_actor_task, convert(exception))

    def process_trial_failure(self, trial, exception):
        observe(trial.trial_id, exception)
        return trial_failed(self, trial, exception)

    actor_task_failed._converts_errors = True
    RayActorManager._actor_task_failed = actor_task_failed
    TuneController._process_trial_failure = process_trial_failure
