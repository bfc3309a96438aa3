"""Training components: techniques that act at fixed points of a run, each a small class with callbacks.

The Trainer keeps an ordered list (build_components) and calls each component's callbacks in that order:
on_train_start before the first timed step, before_step / after_step around every training step (their time
counts as training), before_eval / after_eval around every evaluation, on_train_end once training has stopped,
before the final evaluation and the export. A component with state (buffers, a switch) returns it from
state_dict, so the Trainer's snapshot/rewind and checkpoint/resume carry it; metrics() adds its figures to the
run's metrics. A technique is a config field, one component and a test.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainer.model import GPT
    from trainer.run_config import RunConfig
    from trainer.trainer import Trainer

WEIGHTS_FILE = "weights.pt"  # the trained float weights, kept so `trainer export` can try other export settings


class Component:
    """A technique's callbacks; each does nothing unless the technique overrides it."""

    def on_train_start(self, trainer: "Trainer") -> None:
        """Before the first timed training step (of a resumed run too)."""

    def before_step(self, trainer: "Trainer", step: int, train_s: float, lr_scale: float) -> None:
        """Before training step `step` (counted from 0: the steps taken so far), at training second train_s,
        to be taken at learning-rate multiplier lr_scale."""

    def after_step(self, trainer: "Trainer", step: int, lr_scale: float) -> None:
        """After training step `step` (counted from 1), taken at learning-rate multiplier lr_scale."""

    def before_eval(self, trainer: "Trainer") -> None:
        """Before an evaluation of the model."""

    def after_eval(self, trainer: "Trainer") -> None:
        """After that evaluation."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """Once training has stopped, before the final evaluation and the export."""

    def state_dict(self) -> dict[str, Any]:
        """What training must carry to go on exactly (snapshots and checkpoints); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go back to a state that state_dict returned (copying, so the state can be loaded again)."""

    def metrics(self) -> dict[str, Any]:
        """Figures for the run's RunMetrics (optional fields), once the run is over; none by default."""
        return {}


class SaveWeights(Component):
    """Write the trained float weights to out_dir/weights.pt (main rank), for `trainer export`."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / WEIGHTS_FILE

    def on_train_end(self, trainer: "Trainer") -> None:
        if trainer.rt.is_main:
            torch.save(trainer.model.state_dict(), self.path)


def build_components(cfg: "RunConfig", model: "GPT", out_dir: Path, save_weights: bool) -> list[Component]:
    """The run's components, in the order their callbacks run: at the end of training, recurrence switches on,
    fake quantization off, then the averaged weights replace the trained ones, and weights.pt keeps those."""
    # The technique modules import Component from here, so they are imported when the list is built.
    from trainer.averaging import build_averaging
    from trainer.qat import LateQAT
    from trainer.recurrence import DelayedRecurrence

    tc, components = cfg.train, []
    if tc.recurrence_start_fraction > 0 and model.has_repeats:
        components.append(DelayedRecurrence(model, tc.recurrence_start_fraction))
    if tc.late_qat_lr_scale > 0:
        components.append(LateQAT(model, tc.late_qat_lr_scale, tc.late_qat_bits))
    if tc.average != "none":
        components.append(build_averaging(tc))
    if save_weights:
        components.append(SaveWeights(out_dir))
    return components
