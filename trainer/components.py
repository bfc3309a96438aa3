"""Training components: techniques that act at fixed points of a run, each a small class with callbacks.

The Trainer keeps an ordered list (build_components) and calls each component's callbacks in that order:
on_train_start before the first timed step, after_step after every training step (its time counts as
training), before_eval / after_eval around every evaluation, on_train_end once training has stopped, before
the final evaluation and the export. A technique is a config field, one component and a test.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainer.trainer import Trainer

WEIGHTS_FILE = "weights.pt"  # the trained float weights, kept so `trainer export` can try other export settings


class Component:
    """A technique's callbacks; each does nothing unless the technique overrides it."""

    def on_train_start(self, trainer: "Trainer") -> None:
        """Before the first timed training step."""

    def after_step(self, trainer: "Trainer", step: int, lr_scale: float) -> None:
        """After training step `step` (counted from 1), taken at learning-rate multiplier lr_scale."""

    def before_eval(self, trainer: "Trainer") -> None:
        """Before an evaluation of the model."""

    def after_eval(self, trainer: "Trainer") -> None:
        """After that evaluation."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """Once training has stopped, before the final evaluation and the export."""


class SaveWeights(Component):
    """Write the trained float weights to out_dir/weights.pt (main rank), for `trainer export`."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / WEIGHTS_FILE

    def on_train_end(self, trainer: "Trainer") -> None:
        if trainer.rt.is_main:
            torch.save(trainer.model.state_dict(), self.path)


def build_components(out_dir: Path, save_weights: bool) -> list[Component]:
    """The run's components, in the order their callbacks run."""
    return [SaveWeights(out_dir)] if save_weights else []
