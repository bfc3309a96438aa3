"""Weight averaging for the final evaluation and the export: an EMA of the weights, or SWA's mean of snapshots.

Both keep float32 copies of every tensor of the model's state_dict. At the end of training the raw weights are
scored on the whole val split (RunMetrics.val_bpb_prequant_raw), then the averaged ones replace them for the final
evaluation and the export. Reports during training score the raw weights.

When delayed recurrence switches on, each repeat's own MLP starts as a copy of its block's; its average then starts
as its block's average too (as if the repeat had shadowed the block until then), not as the average of the weights
it held unused while off. With train.average_restart_at_recurrence the whole average starts over from the weights of
the switch step instead: the weights before it trained the model without its loop, and at a short budget an EMA
still holds a share of them at the end (0.997 ** 725 steps = 11%).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainer.components import Component
from trainer.evaluate import EvalResult
from trainer.recurrence import repeat_mlp_sources
from trainer.run_config import TrainConfig

if TYPE_CHECKING:
    from trainer.trainer import Trainer

Weights = dict[str, torch.Tensor]


def float_copy(state: Weights) -> Weights:
    """A detached float32 copy of every tensor."""
    return {name: t.detach().float().clone() for name, t in state.items()}


def ema_update(average: Weights, weights: Weights, decay: float) -> None:
    """average <- decay * average + (1 - decay) * weights, in place."""
    names = list(average)
    values = [average[n] for n in names]
    torch._foreach_mul_(values, decay)
    torch._foreach_add_(values, [weights[n].detach().float() for n in names], alpha=1 - decay)


class WeightAverage(Component):
    """What EMA and SWA share: following the recurrence switch, and swapping the average in at the end."""

    name = "average"

    def __init__(self, restart_at_recurrence: bool = False):
        self.restart_at_recurrence = restart_at_recurrence
        self.recurrence_on: bool | None = None  # the model's mode when the average last took weights
        self.raw: EvalResult | None = None

    def averaged(self) -> Weights | None:
        """The averaged weights, or None when there is nothing to average yet."""
        raise NotImplementedError

    def _buffers(self) -> list[Weights]:
        """The dicts of per-tensor buffers that follow the model's tensors (renamed by the recurrence switch)."""
        raise NotImplementedError

    def restart(self, trainer: "Trainer") -> None:
        """Forget everything averaged so far."""
        raise NotImplementedError

    def follow_recurrence(self, trainer: "Trainer", trained_since: bool = True) -> None:
        """If recurrence switched on since the weights were last taken, start each repeat MLP's average as its
        block MLP's, or (restart_at_recurrence, and a looped step trained since) the whole average over."""
        on = trainer.model.recurrence_active
        switched, self.recurrence_on = self.recurrence_on is False and on, on
        if not switched:
            return
        if self.restart_at_recurrence and trained_since:
            self.restart(trainer)
            trainer.log(f"{self.name}: restarted at step {trainer.step}, where recurrence switched on")
            return
        for buffers in self._buffers():
            for repeat, block in repeat_mlp_sources(trainer.model.cfg).items():
                buffers[repeat].copy_(buffers[block])

    def on_train_end(self, trainer: "Trainer") -> None:
        self.follow_recurrence(trainer, trained_since=False)  # a switch now (training ended first) keeps the average
        averaged = self.averaged()
        if averaged is None:
            trainer.log(f"{self.name}: nothing averaged by step {trainer.step}; the trained weights are evaluated "
                        "and exported as they are")
            return
        with trainer.counted_as_eval():
            self.raw = trainer.evaluate(full=True)
        trainer.log(f"val_bpb_prequant_raw {self.raw.val_bpb:.4f} val_loss {self.raw.val_loss:.4f} (the trained "
                    f"weights; the {self.name} replaces them for the final evaluation and the export)")
        current = trainer.model.state_dict()
        trainer.model.load_state_dict({name: t.to(current[name].dtype) for name, t in averaged.items()})

    def metrics(self) -> dict[str, Any]:
        return {"val_bpb_prequant_raw": self.raw.val_bpb} if self.raw is not None else {}


class EMA(WeightAverage):
    """Exponential moving average of the weights, updated after every step: a <- d a + (1 - d) w."""

    name = "EMA"

    def __init__(self, decay: float, restart_at_recurrence: bool = False):
        super().__init__(restart_at_recurrence)
        self.decay = decay
        self.average: Weights | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        if self.average is None:  # a resumed run brings its own
            self.restart(trainer)
            self.recurrence_on = trainer.model.recurrence_active

    def restart(self, trainer: "Trainer") -> None:
        self.average = float_copy(trainer.model.state_dict())

    def after_step(self, trainer: "Trainer", step: int, lr_scale: float) -> None:
        self.follow_recurrence(trainer)
        ema_update(self.average, trainer.model.state_dict(), self.decay)

    def averaged(self) -> Weights | None:
        return self.average

    def _buffers(self) -> list[Weights]:
        return [self.average] if self.average is not None else []

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "recurrence_on": self.recurrence_on}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average = None if state["average"] is None else float_copy(state["average"])
        self.recurrence_on = state["recurrence_on"]


class SWA(WeightAverage):
    """The mean of the weights after every `every_steps`-th step whose LR scale is below start_lr_scale."""

    name = "SWA"

    def __init__(self, every_steps: int, start_lr_scale: float, restart_at_recurrence: bool = False):
        super().__init__(restart_at_recurrence)
        self.every_steps, self.start_lr_scale = every_steps, start_lr_scale
        self.total: Weights | None = None
        self.count = 0
        self.snapshot_steps: list[int] = []

    def on_train_start(self, trainer: "Trainer") -> None:
        if self.recurrence_on is None:
            self.recurrence_on = trainer.model.recurrence_active

    def after_step(self, trainer: "Trainer", step: int, lr_scale: float) -> None:
        self.follow_recurrence(trainer)
        if step % self.every_steps or not trainer.any_rank(lr_scale < self.start_lr_scale):
            return
        weights = trainer.model.state_dict()
        if self.total is None:
            self.total = float_copy(weights)
            trainer.log(f"SWA: first snapshot after step {step} (LR scale {lr_scale:.4f})")
        else:
            torch._foreach_add_(list(self.total.values()), [weights[n].detach().float() for n in self.total])
        self.count += 1
        self.snapshot_steps.append(step)

    def restart(self, trainer: "Trainer") -> None:
        self.total, self.count, self.snapshot_steps = None, 0, []

    def averaged(self) -> Weights | None:
        if self.total is None:
            return None
        return {name: t / self.count for name, t in self.total.items()}

    def _buffers(self) -> list[Weights]:
        return [self.total] if self.total is not None else []

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count, "snapshot_steps": list(self.snapshot_steps),
                "recurrence_on": self.recurrence_on}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = None if state["total"] is None else float_copy(state["total"])
        self.count, self.snapshot_steps = state["count"], list(state["snapshot_steps"])
        self.recurrence_on = state["recurrence_on"]


def build_averaging(tc: TrainConfig) -> WeightAverage:
    """The averaging train.average asks for."""
    if tc.average == "ema":
        return EMA(tc.ema_decay, tc.average_restart_at_recurrence)
    return SWA(tc.swa_every_steps, tc.swa_start_lr_scale, tc.average_restart_at_recurrence)
