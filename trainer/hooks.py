"""What a caller plugs into a training run: when to report and what to do with a report, when to stop, when to
start the timed training. `trainer train` alone uses NoHooks (TensorBoardHooks with --tensorboard); another
caller passes its own Hooks.

The Trainer calls, in order: attach(trainer) once it is built; warm_up_failed(error) only if the warm-up raised;
ready() once compiled and warm, just before the timed training; then at every step should_stop(), at each log
line on_log(step), and whenever the training seconds reach next_report_s(train_s), report(metrics,
save_checkpoint); after the final evaluations done_with_device(), while the artifact may still be compressing.
A hook may call the Trainer's public methods (evaluate, snapshot, rewind, train_step, counted_as_eval, log) from
report(), to score a report its own way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from trainer.trainer import Trainer

SaveCheckpoint = Callable[[Path], None]


class StopRequested(RuntimeError):
    """The caller's should_stop() said stop: the run ends at once, without evaluating or exporting."""


@dataclass(frozen=True)
class StepLog:
    """What a log line of training says: the step just taken and the run so far."""

    step: int
    loss: float  # the step's mean training loss (nats per token)
    lr_scale: float  # the step's learning-rate multiplier (1 until the warmdown)
    train_s: float
    tokens_per_s: float


class Hooks(Protocol):
    """A caller's hooks into a training run (the module docstring gives the order of the calls)."""

    def attach(self, trainer: "Trainer") -> None:
        """The run's Trainer, once it is built: a hook that scores reports itself keeps it."""

    def warm_up_failed(self, error: BaseException) -> bool:
        """The warm-up raised `error`: True to free its memory, wait in ready() and warm up again."""
        return False

    def ready(self) -> None:
        """Return when the timed training may start (a caller sharing a device waits here for it)."""

    def should_stop(self) -> bool:
        """True to end the run now (StopRequested); asked after every step."""
        return False

    def next_report_s(self, train_s: float) -> float | None:
        """Training seconds of the next report after train_s; None for no more reports."""
        return None

    def report(self, metrics: dict, save_checkpoint: SaveCheckpoint) -> None:
        """A report's metrics (the val prefix scored at step, train_s); save_checkpoint(dir) saves the run there."""

    def on_log(self, step: StepLog) -> None:
        """Called at each log line of training."""

    def done_with_device(self) -> None:
        """The run uses the device no more (writing the artifact is CPU work): a caller sharing it may hand it on."""


class NoHooks(Hooks):
    """No reports, never stops early, never waits: a run on its own."""
