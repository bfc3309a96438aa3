"""Training curves as TensorBoard event files: each log line's loss, LR scale, tokens/s and training seconds, the
val_bpb of reports and the final scores, all at the training step, so `tensorboard --logdir` draws them.

tensorboardX writes the files (it comes with ray[tune]) and is imported only when curves are asked for. Its
writer thread puts what is queued on disk at least every FLUSH_S seconds, so a running job shows its curves.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.hooks import NoHooks, StepLog

if TYPE_CHECKING:
    from trainer.metrics import RunMetrics
    from trainer.trainer import Trainer

PACKAGE = "tensorboardX"
FLUSH_S = 1
# Our event files end so: a folder may also hold another writer's (Ray Tune writes one per trial), and both
# name their files by the second they were opened.
FILENAME_SUFFIX = ".training"
# Scalar tag -> StepLog field, written at every log line.
STEP_TAGS = {"train/loss": "loss", "train/lr_scale": "lr_scale", "train/tokens_per_s": "tokens_per_s",
             "train/train_s": "train_s"}
# A finished run's figures: after the round trip (whole val, and by sliding windows where train.eval_stride
# is set), and before quantization (also before averaging, where train.average is set).
FINAL_SCORES = ("val_bpb", "val_bpb_sliding", "val_bpb_prequant", "val_bpb_prequant_raw")

_told_missing = False


def missing_package() -> str:
    """'' where tensorboardX can be imported, else one line saying what is missing and how to install it."""
    try:
        importlib.import_module(PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != PACKAGE:  # installed, but something it needs is not
            return f"{PACKAGE} cannot be imported ({exc}); reinstall it: `pip install -U {PACKAGE}`"
        return f"the {PACKAGE} package is not installed (`pip install {PACKAGE}`; it comes with ray[tune])"
    except ImportError as exc:  # e.g. a protobuf it was not built for
        return f"{PACKAGE} cannot be imported ({exc}); reinstall it: `pip install -U {PACKAGE}`"
    return ""


class TrainingCurves:
    """One run's curves: an event file in log_dir, which TensorBoard shows as a run named by the folder; the file
    opens at the first figure.

    resumed: the run goes on from a checkpoint, and an earlier file in log_dir may hold the interrupted run's
    figures past it. TensorBoard then hides that file's figures from this run's first one on (its purge_step), so
    the curves show each step once. That first figure is the log line at the first log step after the checkpoint
    (which the interrupted run also logged) or a rung before it; only a rung the interrupted run logged but never
    checkpointed can be left showing.
    """

    def __init__(self, log_dir: Path, resumed: bool = False):
        self.log_dir, self.resumed = Path(log_dir), resumed
        self._writer = None

    def _open(self, first_step: int):
        from tensorboardX import SummaryWriter

        return SummaryWriter(str(self.log_dir), purge_step=first_step if self.resumed else None,
                             flush_secs=FLUSH_S, filename_suffix=FILENAME_SUFFIX)

    def _add(self, tag: str, value: float, step: int) -> None:
        if self._writer is None:
            self._writer = self._open(step)
        self._writer.add_scalar(tag, value, step)

    @classmethod
    def open_or_skip(cls, log_dir: Path, resumed: bool = False) -> TrainingCurves | None:
        """Curves in log_dir; None where tensorboardX is missing, said in one line on stderr once per process."""
        global _told_missing
        missing = missing_package()
        if not missing:
            return cls(log_dir, resumed)
        if not _told_missing:
            print(f"no TensorBoard curves: {missing}", file=sys.stderr, flush=True)
            _told_missing = True
        return None

    def log_step(self, step: StepLog) -> None:
        """A log line's figures, at its step."""
        for tag, field in STEP_TAGS.items():
            self._add(tag, getattr(step, field), step.step)

    def log_scores(self, group: str, step: int, scores: dict[str, float]) -> None:
        """Scores at a step, each tagged group/name (e.g. rung/val_bpb)."""
        for name, value in scores.items():
            self._add(f"{group}/{name}", value, step)

    def log_final(self, metrics: RunMetrics) -> None:
        """A finished run's val_bpb figures (FINAL_SCORES, those it has), at its last step."""
        scores = {name: getattr(metrics, name) for name in FINAL_SCORES}
        self.log_scores("final", metrics.steps, {name: v for name, v in scores.items() if v is not None})

    def close(self) -> None:
        """Write what is queued and close the file (if one was opened)."""
        if self._writer is not None:
            self._writer.close()


class TensorBoardHooks(NoHooks):
    """A run on its own (`trainer train --tensorboard DIR`) whose curves go to DIR; rank 0 writes them.

    Use it as a context manager, so the file is closed however the run ends; finished(metrics) adds the final
    scores.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.curves: TrainingCurves | None = None

    def attach(self, trainer: Trainer) -> None:
        if trainer.rt.is_main:
            self.curves = TrainingCurves(self.log_dir)

    def on_log(self, step: StepLog) -> None:
        if self.curves is not None:
            self.curves.log_step(step)

    def finished(self, metrics: RunMetrics) -> None:
        """The run's final scores, at its last step."""
        if self.curves is not None:
            self.curves.log_final(metrics)

    def __enter__(self) -> TensorBoardHooks:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.curves is not None:
            self.curves.close()
