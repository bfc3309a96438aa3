"""Ray Tune wiring: connect to Ray, build the Tuner (OptunaSearch + ASHA on train_s), run and resume."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from search import store
from trainer.run_config import RunConfig
from search.tune.searcher import (
    enqueue_points, fail_orphans, launched_count, mark_interrupted, open_study, requeue_in_flight, space_loader_of, space_points,
)
from search.settings import SearchSettings, SettingsError
from search.tune import capacity, worker_loss
from search.tune.loggers import logger_callbacks
from search.tune.trainable import make_trainable, reuses_workers

# A failed trial reports no val_bpb; the searcher records it as FAIL, so Tune's check must not abort the run.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
worker_loss.install()

_embedded = False  # whether this process started its own Ray instance (no cluster joined)


def connect(address: str = "") -> str:
    """Join a running Ray cluster (address, $RAY_ADDRESS, or 'auto'), else start Ray here; say which."""
    global _embedded
    if ray.is_initialized():
        return "already connected"
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    if target == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
        _embedded = True
        return "started a local Ray instance (--ray-address local)"
    try:
        ray.init(address=target, log_to_driver=True)
        _embedded = False
        return f"connected to the Ray cluster at {target}"
    except ConnectionError:
        if address or os.environ.get("RAY_ADDRESS"):
            raise SettingsError(
                f"--ray-address/RAY_ADDRESS {target}: no Ray cluster answers there; start it (`ray start --head`) "
                "or leave both unset to run embedded"
            ) from None
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
        _embedded = True
        return "no running Ray cluster found; started a local (embedded) Ray instance"


def joined_cluster() -> bool:
    """Whether connect() joined a running cluster (whose other nodes may hold what this machine lacks)."""
    return ray.is_initialized() and not _embedded


def cap_cpu_concurrency(settings: SearchSettings, largest: RunConfig | None) -> tuple[SearchSettings, str]:
    """For CPU trials: at most as many at once as every node's memory and CPUs hold for the space's most
    memory-hungry config (largest); returns the settings with max_concurrent set and a line saying why."""
    if settings.gpus_per_trial > 0:
        return settings, ""
    if largest is None:
        return settings, "CPU trials: this space gives no shapes to size memory from; concurrency as CPUs allow"
    per_trial = capacity.trial_memory_bytes(largest)
    nodes = capacity.ray_nodes()
    if not nodes:  # a cluster scaled to zero: Ray places trials as nodes join
        return settings, (f"CPU trials: up to {capacity.gib(per_trial)} each; no node with CPUs is up yet, so "
                          "Ray's resources set how many run at once as nodes join")
    fits = capacity.trials_that_fit(per_trial, settings.cpus_per_trial, nodes)
    held = capacity.trials_memory_holds(per_trial, nodes)
    biggest = max(n.memory_bytes for n in nodes)
    t = largest.train
    if held < 1:
        smaller = "" if settings.extra.get("smoke") else "pass --smoke (or, on a cluster whose GPU nodes are not up " \
            "yet, --gpus-per-trial 1), or "
        raise SettingsError(
            f"a CPU trial of this space may need up to {capacity.gib(per_trial)} (micro-batches of "
            f"{t.split_batch(1)[0]:,} tokens, eval batches of {t.val_batch_tokens:,}) but the largest Ray node has "
            f"{capacity.gib(biggest)} for tasks; {smaller}use smaller batches (e.g. --set "
            "train.micro_batch_tokens=8192 --set train.batch_tokens=8192 --set train.val_batch_tokens=8192), or "
            "train on GPUs")
    # Unset, the cluster as it is now sets the number; an asked --max-concurrent is lowered only for memory, since
    # nodes that join later (an autoscaler's, or workers still starting) add CPUs and Ray places trials on them.
    chosen = max(fits, 1) if not settings.max_concurrent else min(held, settings.max_concurrent)
    where = ", ".join(f"{capacity.gib(n.memory_bytes)} and {n.cpus:g} CPUs" for n in nodes[:4])
    note = (f"CPU trials: up to {capacity.gib(per_trial)} each (the space's largest shape at these train settings); "
            f"{chosen} at once (Ray nodes: {where}{', ...' if len(nodes) > 4 else ''})")
    if settings.max_concurrent > held:
        note += f"; --max-concurrent {settings.max_concurrent} lowered to fit the memory"
    elif chosen > fits:
        note += f"; {fits} fit the CPUs up now, the rest wait for Ray to place them as CPUs free up or nodes join"
    return dataclasses.replace(settings, max_concurrent=chosen).validate(), note


def resolve_gpus(settings: SearchSettings, requested: float | None) -> SearchSettings:
    """Default --gpus-per-trial: 1 when the cluster has GPUs, else 0 (CPU trials). GPUs asked of a joined cluster
    with none up yet are waited for (an autoscaler starts GPU nodes on demand); a local Ray without GPUs refuses."""
    if requested is not None:
        gpus = requested
    else:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if gpus > 0 and ray.cluster_resources().get("GPU", 0) == 0:
        if not joined_cluster():
            raise SettingsError(f"--gpus-per-trial {gpus:g}: this Ray cluster has no GPUs; pass --gpus-per-trial 0")
        print(f"[search] --gpus-per-trial {gpus:g}: no GPU node of this cluster is up yet; trials wait for one "
              "(the autoscaler starts GPU nodes on demand)", flush=True)
    return dataclasses.replace(settings, gpus_per_trial=float(gpus)).validate()


def make_scheduler(settings: SearchSettings) -> ASHAScheduler | FIFOScheduler:
    """ASHA on val_bpb at rungs of training time (trials past the top rung run to their budget); with
    early_stopping 'none', a scheduler that stops nothing (trials still report at the rungs)."""
    if settings.early_stopping == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="train_s", metric="val_bpb", mode="min",
        grace_period=settings.rung_s,
        # The tiny factor keeps float rounding from dropping the top rung (log(max_t/grace)/log(rf) ~ int).
        max_t=settings.asha_max_t * (1 + 1e-6),
        reduction_factor=settings.reduction_factor,
        stop_last_trials=False,
    )


def trial_name(trial) -> str:
    """'t0007_ab12cd34': Optuna trial number and Tune trial id."""
    number = (trial.config or {}).get("optuna_number", -1)
    return f"t{number:04d}_{trial.trial_id}"


def _run_config(settings: SearchSettings) -> tune.RunConfig:
    return tune.RunConfig(
        name=settings.name,
        storage_path=settings.storage,
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=logger_callbacks(settings),  # --logger: W&B or MLflow, else none
        verbose=1,
    )


def build_tuner(settings: SearchSettings, num_samples: int | None = None, drain_after_s: float = 0.0) -> tune.Tuner:
    """A new Tuner for the search: RecurrenceSearcher (OptunaSearch) + ASHA, num_samples (default: the search's
    trial count) trainables, none launched after drain_after_s seconds from now (0: no limit)."""
    if drain_after_s < 0:
        raise SettingsError(f"--drain-after-s {drain_after_s:g}: must be 0 (no limit) or a positive number of seconds")
    searcher = worker_loss.NamingSearcher(settings, space_loader=space_loader_of(settings),
                                          launch_until=time.time() + drain_after_s if drain_after_s > 0 else None)
    return tune.Tuner(
        make_trainable(settings),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(settings),
            num_samples=settings.trials if num_samples is None else num_samples,
            max_concurrent_trials=settings.max_concurrent or None,
            # Consecutive trials run in one warm worker process (no new Python process, torch import or CUDA
            # context per trial); each writes its run/ straight into its storage folder (trainable.run_dir).
            reuse_actors=reuses_workers(settings),
            # Short, stable names: the Optuna trial number links a folder to the study and the report.
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=_run_config(settings),
    )


@contextlib.contextmanager
def interrupt_after(seconds: float):
    """Send this process one SIGINT after `seconds` (0: never), as Ctrl-C would: Tune saves its state and stops,
    and the trials in flight stay resumable. For machines held for a fixed time (leases, spot, job limits)."""
    if seconds < 0:
        raise SettingsError(f"--stop-after-s {seconds:g}: must be 0 (run to the end) or a positive number of seconds")
    if seconds == 0:
        yield
        return
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def run_search(settings: SearchSettings, points: list[tuple[str, dict]] | None = None, stop_after_s: float = 0.0,
               drain_after_s: float = 0.0):
    """Start a new search (refusing to overwrite one of the same name) and run it to the end, or until
    stop_after_s seconds of the driver (0: no limit), leaving it resumable; after drain_after_s seconds (0: no
    limit) it launches no new trial and ends when those in flight do.

    points: settings.enqueue already resolved to (file, assignment) by the caller (the CLI does, to fail before
    Ray starts); else they are resolved here.
    """
    store.ensure_new(settings)
    store.save_settings(settings)
    open_study(settings)  # create the database now so `status` works from the first second
    enqueue_points(settings, space_points(settings, list(settings.enqueue)) if points is None else points)
    results = fit(build_tuner(settings, drain_after_s=drain_after_s), settings, stop_after_s,
                  "its trainable never reported a finish (driver stopped)")
    say_if_drained(settings, drain_after_s)
    return results


def say_if_drained(settings: SearchSettings, drain_after_s: float) -> None:
    """After a drained run: how many trials were launched and how to launch the rest."""
    launched = launched_count(settings)
    if drain_after_s > 0 and launched < settings.trials:
        print(f"[search] no trial launched after {drain_after_s:g}s (--drain-after-s): {launched} of "
              f"{settings.trials} launched, none in flight; `python -m search resume {settings.name} --from-study` "
              "launches the rest, here or on another machine", flush=True)


def tune_trial_ids(results) -> set[str]:
    """Tune ids of the trials this driver ran (from their folder names, t<number>_<tune id>)."""
    return {Path(r.path).name.rsplit("_", 1)[-1] for r in results if r.path}


ORPHAN_OF_A_DEAD_DRIVER = "started by a driver that died before Tune checkpointed it; not resumed"


def fit(tuner: tune.Tuner, settings: SearchSettings, stop_after_s: float, orphan_reason: str):
    """Run the tuner (stopped after stop_after_s seconds, 0: no limit), then close out its unfinished trials."""
    with interrupt_after(stop_after_s):
        results = tuner.fit()
    close_out(settings, results, orphan_reason)
    return results


def close_out(settings: SearchSettings, results, orphan_reason: str) -> None:
    """After fit(): trials of this run that never reported a finish were in flight when the driver was stopped
    (Ctrl-C, a job's time limit): they stay resumable as `interrupted`. Any other unfinished trial is an orphan
    of an earlier driver that Tune never knew of: FAIL."""
    ran_here = tune_trial_ids(results)
    count = mark_interrupted(settings, f"driver stopped; `python -m search resume {settings.name}` continues it "
                                       "from its last checkpoint", ran_here)
    if count:
        print(f"[search] stopped with {count} trial(s) in flight: `python -m search resume {settings.name}` "
              "continues them and launches the rest", flush=True)
    fail_orphans(settings, orphan_reason, keep_tune_ids=ran_here)


def resume_search(settings: SearchSettings, stop_after_s: float = 0.0):
    """Continue a search whose driver died: Tuner.restore keeps finished trials, resumes unfinished ones (until
    stop_after_s seconds, as run_search)."""
    path = store.experiment_path(settings)
    if not tune.Tuner.can_restore(path):
        raise SettingsError(
            f"search {settings.name}: Tune has no experiment state at {path} (killed before its first checkpoint, "
            f"or left behind on another machine); `python -m search resume {settings.name} --from-study` goes on "
            "from the study alone, starting the trials that were in flight again from scratch"
        )
    tuner = tune.Tuner.restore(path, trainable=make_trainable(settings), resume_unfinished=True,
                               resume_errored=True)
    return fit(tuner, settings, stop_after_s, ORPHAN_OF_A_DEAD_DRIVER)


def continue_from_study(settings: SearchSettings, stop_after_s: float = 0.0, drain_after_s: float = 0.0):
    """Continue a search from its study alone (Tune's state lost, or left on another machine, or a drained run):
    the trials in flight start again from scratch as new trials, and the sampler goes on from every finished
    one (stop_after_s and drain_after_s as in run_search)."""
    requeued = requeue_in_flight(settings, "in flight when its driver stopped, with no Tune state to resume it "
                                           "from; started again from scratch as a new trial (--from-study)")
    remaining = settings.trials - launched_count(settings)
    print(f"[search] {settings.name}: going on from the study; {len(requeued)} trial(s) in flight start again "
          f"({', '.join(f'#{n}' for n in requeued) or 'none'}), {max(remaining, 0)} trial(s) left to launch",
          flush=True)
    if remaining <= 0:
        return None
    results = fit(build_tuner(settings, num_samples=remaining, drain_after_s=drain_after_s), settings, stop_after_s,
                  ORPHAN_OF_A_DEAD_DRIVER)
    say_if_drained(settings, drain_after_s)
    return results


__all__ = ["connect", "build_tuner", "run_search", "resume_search", "continue_from_study", "make_scheduler",
           "resolve_gpus", "interrupt_after", "joined_cluster", "cap_cpu_concurrency"]
