"""A search trial's hooks into the trainer: reports at ASHA's rungs (and every report_every_s), each scored the
way the search asks, Tune's stop flag checked every step, and the turn on a shared GPU taken before training.

The trainer itself reports only the val prefix's score at the times next_report_s asks for; TrialHooks.report
rescores it with the Trainer's public steps before sending it on:
- rung_roundtrip: on the weights after the artifact's quantization round trip, as the final val_bpb is scored,
  except that GPTQ (export.gptq) is left out: its calibration and column-by-column rounding cost too much to run
  at every rung, so a rung rounds each row to the nearest step of the same grid;
- rung_cooldown_fraction: after a short learning-rate cooldown, rewound afterwards, so training goes on as if
  it had never run. Both cost evaluation time (eval_s), never training budget.
Reports score the weights training has now: the raw weights, not an average (train.average) that replaces them
only at the end, in the schedule that runs now (train.recurrence_start_fraction), without fake quantization.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from trainer import artifact
from trainer.device_lease import warm_up_again
from trainer.evaluate import EvalResult
from trainer.hooks import NoHooks, SaveCheckpoint, StepLog
from trainer.optim import cooldown_scales, lr_scale
from trainer.trainer import check_finite

if TYPE_CHECKING:
    from search.settings import SearchSettings
    from trainer.tensorboard_log import TrainingCurves
    from trainer.trainer import Trainer


@dataclass(frozen=True)
class RungPlan:
    """When a trial reports and how each report is scored."""

    at_s: tuple[float, ...] = ()  # training seconds of one-off reports: ASHA's rungs
    every_s: float = 0.0  # also a report every this many training seconds (0: none)
    roundtrip: bool = False  # score after the artifact's quantization round trip
    cooldown_fraction: float = 0.0  # score after a cooldown of this fraction of the steps so far (0: none)

    @classmethod
    def from_settings(cls, settings: "SearchSettings") -> "RungPlan":
        """The plan of a search's trials: ASHA's milestones plus the periodic reports, scored as it asks."""
        return cls(settings.asha_milestones_s, settings.report_every_s, settings.rung_roundtrip,
                   settings.rung_cooldown_fraction)

    def next_report_s(self, train_s: float) -> float | None:
        """The first report time after train_s on either schedule (at_s, multiples of every_s)."""
        times = [t for t in self.at_s if t > train_s]
        if self.every_s > 0:
            times.append((math.floor(train_s / self.every_s) + 1) * self.every_s)
        return min(times, default=None)


def roundtrip_score(trainer: "Trainer") -> EvalResult:
    """The val prefix scored on the weights after the artifact's round trip, without GPTQ (nearest rounding on the
    same grid: calibrating at every rung would cost more than the rung); training's own weights are put back."""
    trained = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    cfg = dataclasses.replace(trainer.cfg, export=dataclasses.replace(trainer.cfg.export, gptq=False))
    trainer.model.load_state_dict(artifact.unpack(artifact.pack(trained, cfg))[1])
    post = trainer.evaluate()
    trainer.model.load_state_dict(trained)
    return post


class TrialHooks(NoHooks):
    """The hooks a trial passes to the trainer: reports go to `send`, stop when `should_stop` says,
    `take_turn` (if any) blocks until this trial may train on its shared device and `hand_on` (if any) gives the
    device to the next trial once the run needs it no more; `curves` (if any) gets each log line, for TensorBoard."""

    def __init__(self, plan: RungPlan, send: Callable[[dict, SaveCheckpoint], None],
                 should_stop: Callable[[], bool] | None = None, take_turn: Callable[[], None] | None = None,
                 curves: "TrainingCurves | None" = None, hand_on: Callable[[], None] | None = None):
        self.plan, self.send = plan, send
        self._should_stop, self.take_turn, self.hand_on = should_stop, take_turn, hand_on
        self.curves = curves
        self.trainer: Trainer | None = None

    def attach(self, trainer: "Trainer") -> None:
        self.trainer = trainer

    def warm_up_failed(self, error: BaseException) -> bool:
        """Beside the trial that holds a shared GPU, a warm-up may not fit: take the turn, then warm up again."""
        return self.take_turn is not None and warm_up_again(error, self.trainer.log, "trial")

    def ready(self) -> None:
        if self.take_turn is None:
            return
        asked_s = time.perf_counter()
        self.take_turn()
        self.trainer.log(f"waited {time.perf_counter() - asked_s:.1f}s for the device")

    def should_stop(self) -> bool:
        return self._should_stop is not None and self._should_stop()

    def next_report_s(self, train_s: float) -> float | None:
        return self.plan.next_report_s(train_s)

    def report(self, metrics: dict, save_checkpoint: SaveCheckpoint) -> None:
        """Rescore the trainer's report as the plan asks, then send it."""
        with self.trainer.counted_as_eval():
            if self.plan.roundtrip:
                post = roundtrip_score(self.trainer)
                metrics = {**metrics, "val_bpb": post.val_bpb, "val_loss": post.val_loss}
            if self.plan.cooldown_fraction > 0:
                metrics = self._after_cooldown(metrics)
        self.send(metrics, save_checkpoint)

    def on_log(self, step: StepLog) -> None:
        """A log line's figures to the trial's curves."""
        if self.curves is not None:
            self.curves.log_step(step)

    def done_with_device(self) -> None:
        """The next trial may train while this one's artifact compresses."""
        if self.hand_on is not None:
            self.hand_on()

    def _after_cooldown(self, rung: dict) -> dict:
        """The rung scored after a cooldown of cooldown_fraction of the steps so far, LR decaying linearly to 0
        from where it is; the weights, optimizer state and data position are rewound after.

        ASHA ranks the cooled-down score; the score before stays in the report (val_bpb_before_cooldown), so the
        search's fidelity table can say which of the two ranked the trials as their finals did.
        """
        trainer = self.trainer
        saved = trainer.snapshot()
        steps = max(1, round(self.plan.cooldown_fraction * trainer.step))
        start_scale = lr_scale(trainer.cfg.train, trainer.step, trainer.train_s)
        for i, scale in enumerate(cooldown_scales(start_scale, steps)):
            trainer.train_step(trainer.step + i, trainer.train_s, scale)
        pre = trainer.evaluate()
        check_finite(pre.val_loss, trainer.step)
        post = roundtrip_score(trainer) if self.plan.roundtrip else pre
        trainer.rewind(saved)
        trainer.log(f"rung at step {trainer.step}: val_bpb {rung['val_bpb']:.4f} before, {post.val_bpb:.4f} after "
                    f"a {steps}-step cooldown")
        return {**rung, "val_bpb_before_cooldown": rung["val_bpb"], "val_bpb": post.val_bpb,
                "val_loss": post.val_loss, "val_bpb_prequant": pre.val_bpb, "val_loss_prequant": pre.val_loss,
                "cooldown_steps": steps}
