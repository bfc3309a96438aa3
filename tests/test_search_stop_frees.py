"""A trial that Tune stops mid-training must let go of its trainer's objects before it hands the GPU on.

Tune stops a function trial by raising SystemExit inside tune.report; until that exception is handled, its
traceback keeps the trainer's frames alive. These tests run real local Tune trials that Tune stops, and check
what a trial's `finally` block (where search.tune.trainable frees GPU memory and releases the lease) can still see.
"""
from __future__ import annotations

import gc
import json
import sys
import weakref
from contextlib import nullcontext
from pathlib import Path

import pytest

from search.tune.trainable import frames_released_on_exit


class Weights:
    """Stands in for the model and optimizer state that a training loop's frame holds."""


def train_until_stopped(report) -> None:
    """A training loop in miniature: its frame holds the weights while it reports each step."""
    weights = Weights()
    for step in range(1_000):
        report(step, weights)


def stopped_trial(config: dict) -> None:
    """Tune function trial: report until Tune stops it, then record what the `finally` block found alive."""
    from ray import tune

    if config["release"] is None:
        return  # the closing trial (see the fixture)
    held: list[weakref.ref] = []
    caught: list[str] = []

    def report(step: int, weights: Weights) -> None:
        if not held:
            held.append(weakref.ref(weights))
        tune.report({"step": step})

    guard = frames_released_on_exit() if config["release"] else nullcontext()
    try:
        try:
            with guard:
                train_until_stopped(report)
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised for Tune
            caught.append(type(exc).__name__)
            raise
    finally:
        gc.collect()
        out = Path(config["out"])
        out.with_suffix(".tmp").write_text(json.dumps({"alive": held[0]() is not None, "caught": caught}))
        out.with_suffix(".tmp").replace(out)  # whole or absent, never half-written


@pytest.fixture(scope="module")
def stopped_trials(tmp_path_factory) -> dict:
    import ray
    from ray import tune

    root = tmp_path_factory.mktemp("stopped")
    # pytest imports this file by its bare name, which Ray's workers cannot import: send the trial by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", include_dashboard=False, num_cpus=2)
    try:
        # After Tune stops a trial its thread runs on while the worker shuts down, so a trial's `finally` may be cut
        # short (CI once read an empty record). One reused worker runs the trials in turn, and Tune waits for a
        # trial's thread to end before it starts the next; the last, closing trial records nothing.
        tuner = tune.Tuner(
            tune.with_resources(stopped_trial, {"cpu": 1}),
            param_space={"release": tune.grid_search([True, False, None]),
                         "out": tune.sample_from(lambda spec: str(root / f"release_{spec.config.release}.json"))},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(root / "storage"), stop={"training_iteration": 3},
                                      verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors
    return {release: json.loads((root / f"release_{release}.json").read_text()) for release in (True, False)}


def test_tune_stops_a_trial_with_system_exit_from_report(stopped_trials):
    # The premise of frames_released_on_exit: the stop arrives as an exception in flight, not a return.
    for record in stopped_trials.values():
        assert record["caught"] == ["SystemExit"]


def test_without_the_guard_the_stopped_trials_weights_outlive_its_cleanup(stopped_trials):
    assert stopped_trials[False]["alive"] is True


def test_with_the_guard_the_weights_are_gone_before_the_cleanup(stopped_trials):
    assert stopped_trials[True]["alive"] is False


def test_the_guard_passes_exceptions_on_with_their_frames_emptied():
    held: list[weakref.ref] = []

    def fail() -> None:
        weights = Weights()
        held.append(weakref.ref(weights))
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad") as info:
        with frames_released_on_exit():
            fail()
    gc.collect()
    assert info.value.__traceback__ is not None  # the exception and its traceback live on for the handler ...
    assert held[0]() is None  # ... but the failed frame no longer holds its locals
