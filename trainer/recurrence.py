"""Delayed recurrence: train the schedule without its repeats first, then switch them on (GPT.set_recurrence).

The switch comes before the first step whose training progress reaches train.recurrence_start_fraction, where
progress is max(step / max_steps, train_s / budget_s): whichever bound ends training decides. Switching on starts
each repeat's own MLP as a copy of its block's (repeat_mlp_sources names the pairs). A run that ends before the
switch switches on at the end, since the artifact runs the full schedule.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.components import Component
from trainer.model import GPT
from trainer.model_config import ModelConfig
from trainer.run_config import TrainConfig
from trainer.schedule import build_schedule, repeat_positions

if TYPE_CHECKING:
    from trainer.trainer import Trainer


def training_progress(tc: TrainConfig, step: int, train_s: float) -> float:
    """How far training is before step `step` (counted from 0) at train_s: the larger of its two bounds' fractions."""
    return max(step / tc.max_steps, train_s / tc.budget_s)


def repeat_mlp_sources(cfg: ModelConfig) -> dict[str, str]:
    """{a repeat's own MLP weight: its block's MLP weight}: what switching recurrence on copies."""
    repeats = repeat_positions(cfg)
    return {f"mlps.{layer.mlp}.{part}.weight": f"mlps.{layer.block}.{part}.weight"
            for layer in build_schedule(cfg) if layer.position in repeats and layer.mlp != layer.block
            for part in ("fc", "proj")}


class DelayedRecurrence(Component):
    """Recurrence off from the start of training, on from the first step at start_fraction of training."""

    def __init__(self, model: GPT, start_fraction: float):
        self.model, self.start_fraction = model, start_fraction
        self.switch_step: int | None = None
        model.set_recurrence(False)

    def before_step(self, trainer: "Trainer", step: int, train_s: float, lr_scale: float) -> None:
        if self.model.recurrence_active:
            return
        progress = training_progress(trainer.tc, step, train_s)
        if trainer.any_rank(progress >= self.start_fraction):  # every rank switches on the same step
            self.model.set_recurrence(True)
            self.switch_step = step
            trainer.log(f"recurrence on from step {step} (progress {progress:.4f}, start fraction "
                        f"{self.start_fraction}): {len(self.model.steps)} virtual layers")

    def on_train_end(self, trainer: "Trainer") -> None:
        if not self.model.recurrence_active:
            self.model.set_recurrence(True)
            trainer.log(f"training ended at step {trainer.step} before recurrence's start (fraction "
                        f"{self.start_fraction}): switched on now, so the evaluation and the artifact run the full "
                        f"schedule, each repeat's MLP a copy of its block's")

    def state_dict(self) -> dict[str, Any]:
        return {"on": self.model.recurrence_active, "switch_step": self.switch_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The Trainer loads components before the weights: switching on copies MLPs, which the saved weights
        # then overwrite.
        self.model.set_recurrence(bool(state["on"]))
        self.switch_step = state["switch_step"]
