"""search.tune.private_api, the only code that touches Optuna's and Ray's private names: each name is still there
and does its job on the installed versions (a failure names the private name), and no other module uses any."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.tune import private_api
from search.tune.private_api import PrivateApiMoved, attach_trial

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def study_pair(tmp_path):
    """One study opened twice from one SQLite file, as two driver processes would."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = optuna.create_study(study_name="s", storage=url)
    return first, optuna.load_study(study_name="s", storage=url)


def test_the_optuna_private_names_are_still_there(study_pair):
    study, _ = study_pair
    for name in ("_storage", "_study_id"):
        assert hasattr(study, name), f"optuna.Study.{name} moved in optuna {optuna.__version__}: update private_api"
    assert callable(getattr(study._storage, "get_trial_id_from_study_id_trial_number", None)), (
        f"the storage's get_trial_id_from_study_id_trial_number moved in optuna {optuna.__version__}")


def test_a_trial_asked_by_one_process_is_finished_by_another(study_pair):
    first, second = study_pair
    asked = first.ask()
    x = asked.suggest_float("x", 0.0, 1.0)
    other = first.ask()  # a second trial, so a wrong number would show
    trial = attach_trial(second, asked.number)
    assert trial.number == asked.number and trial.params == {"x": x}
    trial.set_user_attr("status", "done")
    trial.report(0.5, step=7)
    trial.set_constraint("excess_bytes", -3.0)
    second.tell(trial, 0.25)
    stored = {t.number: t for t in first.get_trials(deepcopy=False)}
    done = stored[asked.number]
    assert done.state == TrialState.COMPLETE and done.value == 0.25 and done.user_attrs == {"status": "done"}
    assert done.intermediate_values == {7: 0.5} and done.constraints == {"excess_bytes": -3.0}
    assert stored[other.number].state == TrialState.RUNNING


def test_a_moved_name_is_named_in_the_error():
    class NotAStudy:
        """What optuna.Study would look like after a release renamed its storage attribute."""

    with pytest.raises(PrivateApiMoved, match=r"optuna\.Study\._storage/_study_id is gone in optuna .*private_api"):
        attach_trial(NotAStudy(), 0)


def test_no_session_outside_a_trainable():
    assert private_api.get_session() is None and private_api.tune_stop_requested() is False


def session_trial(config: dict) -> None:
    """Tune function trial: look at Ray's session through the adapter, record it, then report until stopped."""
    import threading

    from ray import tune

    from search.tune.private_api import get_session, tune_stop_requested

    session = get_session()
    record = {"session": type(session).__name__,
              "stop_event": type(getattr(session, "stop_event", None)).__name__,
              "is_event": isinstance(getattr(session, "stop_event", None), threading.Event),
              "requested_before_report": tune_stop_requested()}
    tune.report({"step": 0})
    record["requested_after_report"] = tune_stop_requested()
    out = Path(config["out"])
    out.with_suffix(".tmp").write_text(json.dumps(record))
    out.with_suffix(".tmp").replace(out)  # whole or absent
    tune.report({"step": 1})  # Tune stops the trial here (stop at training_iteration 2): SystemExit


def test_the_ray_session_and_its_stop_flag_are_still_there(tmp_path):
    # Function trainables report synchronously: Tune's stop sets the session's stop_event and wakes the trial inside
    # tune.report, which raises SystemExit. So in a running trial the flag reads False; it is read (never written)
    # between reports by trainers that poll should_stop.
    import ray
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/ by name
    ray.init(address="local", include_dashboard=False, num_cpus=1)
    try:
        tuner = tune.Tuner(
            session_trial, param_space={"out": str(tmp_path / "session.json")},
            run_config=tune.RunConfig(storage_path=str(tmp_path / "storage"), stop={"training_iteration": 2},
                                      verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    record = json.loads((tmp_path / "session.json").read_text())
    assert record["session"] == "_TrainSession", f"ray.train._internal.session.get_session() returned {record}"
    assert record["is_event"], (f"ray.train._internal.session._TrainSession.stop_event is {record['stop_event']}, "
                                "not a threading.Event: update search/tune/private_api.py")
    assert record["requested_before_report"] is False and record["requested_after_report"] is False


PRIVATE_USE = re.compile(
    r"(from|import)\s+(ray|optuna)\.[\w.]*\._"  # a private module of either package
    r"|\b(study|trial|storage|session|searcher|scheduler|sampler)\._[a-z]"  # a private attribute of their objects
)


def test_no_module_but_the_adapter_uses_a_private_optuna_or_ray_name():
    offenders = []
    for package in ("search", "trainer", "spaces"):
        for path in (REPO / package).rglob("*.py"):
            if path.name == "private_api.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE_USE.search(line.split("#")[0]):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "private Optuna/Ray names outside search/tune/private_api.py:\n" + "\n".join(offenders)


def test_the_tune_failure_handlers_the_patch_wraps_are_still_there():
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.tune.execution.tune_controller import TuneController

    assert callable(getattr(RayActorManager, "_actor_task_failed", None)), (
        "ray.air.execution._internal.actor_manager.RayActorManager._actor_task_failed moved: "
        "update search/tune/private_api.py patch_trial_failures")
    assert callable(getattr(TuneController, "_process_trial_failure", None)), (
        "ray.tune.execution.tune_controller.TuneController._process_trial_failure moved: "
        "update search/tune/private_api.py patch_trial_failures")
