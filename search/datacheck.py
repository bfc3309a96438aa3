"""Check the data and tokenizer once, where the trials will read them, before any trial starts.

On a cluster the data lives on every node that trains (cluster.yaml downloads it in worker_setup_commands) and the
head, which only runs the driver, need not hold it. So when --data or --tokenizer is not on the driver's machine
and the driver joined a running cluster, the check runs as a Ray task asking for a trial's resources: it lands on
a node a trial could land on (waiting while the autoscaler starts one) and reports what that node holds.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

from search.settings import SearchSettings, SettingsError
from trainer.data.check import DataSummary, check_data

WAIT_NOTE_S = 60.0  # how often to say that the check still waits for a node


def _check_here(data_dir: str, tokenizer: str, vocab_size: int | None) -> tuple[DataSummary | None, str, str]:
    """check_data on this node: (summary, "", where) or (None, the error line, where)."""
    import ray

    where = socket.gethostname()
    if ray.is_initialized():
        where += f" (Ray node {ray.get_runtime_context().get_node_id()})"
    try:
        return check_data(data_dir, tokenizer, vocab_size), "", where
    except ValueError as exc:  # ShardError, TokenizerError
        return None, str(exc), where


def trial_resources(settings: SearchSettings) -> dict:
    """Ray options that place a task where a trial of this search could run."""
    if settings.gpus_per_trial > 0:
        return {"num_cpus": 0, "num_gpus": min(settings.gpu_share, 1.0)}
    return {"num_cpus": settings.cpus_per_trial}


def held_here(settings: SearchSettings) -> bool:
    """Whether the driver's machine holds both the data folder and the tokenizer."""
    return Path(settings.data_dir).is_dir() and Path(settings.tokenizer).is_file()


def check_where_trials_run(settings: SearchSettings, vocab_size: int | None, remote: bool,
                           say=print) -> tuple[DataSummary, str]:
    """(summary, where it was checked): here if this machine holds the data, else on a trial node when `remote`
    (a running cluster); raises SettingsError with the problem and the fix."""
    if held_here(settings) or not remote:
        summary, error, where = _check_here(settings.data_dir, settings.tokenizer, vocab_size)
        if error:
            raise SettingsError(error)
        return summary, where
    import ray

    say(f"[search] --data/--tokenizer are not on this machine: checking them on a node where trials run "
        f"(a Ray task asking for {trial_resources(settings)})")
    task = ray.remote(_check_here).options(**trial_resources(settings)).remote(
        settings.data_dir, settings.tokenizer, vocab_size)
    started = time.monotonic()
    while not ray.wait([task], timeout=WAIT_NOTE_S)[0]:
        say(f"[search] still waiting for a node to check the data on ({time.monotonic() - started:.0f} s; the "
            "autoscaler may be starting one)")
    summary, error, where = ray.get(task)
    if error:
        raise SettingsError(f"on {where}: {error}")
    return summary, where
