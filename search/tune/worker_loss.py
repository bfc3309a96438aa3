"""A trial whose worker process was killed (Ray's memory monitor, the kernel's OOM killer, a crash) is a failed
trial with that reason, never a dead driver.

Ray 2.60 raises ray.exceptions.OutOfMemoryError from a trial actor that its memory monitor killed, and Tune's actor
manager only expects RayActorError or RayTaskError there: anything else escapes as "Caught unexpected exception"
and ends the driver with every trial in flight (a CPU search at the default train settings did this). install()
hands such an error to Tune as an actor death, so Tune fails (and, within --max-failures, retries) that one trial,
and notes why each trial's worker was lost, which NamingSearcher records as the failed trial's reason in place of
Tune's generic one (a finished Optuna trial can no longer be changed, so it must be named before it is told).
"""
from __future__ import annotations

from ray.exceptions import OutOfMemoryError, RayActorError, RayTaskError

from search.tune import private_api
from search.tune.searcher import RecurrenceSearcher
from search.vocabulary import FAILED, TUNE_ID

OOM_FIX = "lower --max-concurrent or --trials-per-gpu, or use --smoke (smaller batches) on a CPU"

_lost: dict[str, str] = {}  # Tune trial id -> why its worker was lost (the driver process's own record)


class WorkerOutOfMemory(RayActorError):
    """A trial's worker killed by Ray's memory monitor, as the actor death Tune knows how to handle."""

    def __init__(self, message: str = "the worker was killed for memory"):
        super().__init__(error_msg=message)

    def __reduce__(self):  # Tune pickles trial errors; keep the message
        return type(self), (self.error_msg,)


def reason_of(error: BaseException | None) -> str | None:
    """The reason for a trial that Tune ended with `error`, when its worker was lost; None for other errors."""
    if error is None:
        return None
    text = str(error)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)[:240]
    if isinstance(error, (WorkerOutOfMemory, OutOfMemoryError)) or "running low on memory" in text:
        return f"out of memory: the worker was killed by Ray's memory monitor ({first}); {OOM_FIX}"
    if isinstance(error, RayActorError) and not isinstance(error, RayTaskError):
        # Ray cannot tell why a process vanished; on a training node it is nearly always the kernel's OOM killer.
        return (f"worker killed: its process died without an error (Ray: {first}); the usual cause is the "
                f"kernel's OOM killer (`dmesg` on the node says): {OOM_FIX}")
    return None


def _as_actor_death(error: BaseException) -> BaseException:
    """Ray's OutOfMemoryError as the actor death Tune handles; any other error unchanged."""
    if isinstance(error, OutOfMemoryError) and not isinstance(error, (RayActorError, RayTaskError)):
        return WorkerOutOfMemory(str(error))
    return error


def _note_lost(trial_id: str, error: BaseException) -> None:
    reason = reason_of(error)
    if reason:
        _lost[trial_id] = reason


def install() -> None:
    """Patch Tune (once per process) as the module docstring says."""
    private_api.patch_trial_failures(_as_actor_death, _note_lost)


class NamingSearcher(RecurrenceSearcher):
    """The search's searcher, recording a lost worker's reason on the trial Tune failed for it."""

    def _finish(self, ot_trial, state, values, status, reason):
        if status == FAILED:
            reason = _lost.pop(str(ot_trial.user_attrs.get(TUNE_ID)), None) or reason
        super()._finish(ot_trial, state, values, status, reason)


__all__ = ["install", "reason_of", "NamingSearcher", "WorkerOutOfMemory"]
