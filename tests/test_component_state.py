"""Components with state: snapshot/rewind and checkpoint/resume carry the EMA, the recurrence mode and the late-QAT
switch, so a rewound or resumed run continues exactly."""
from __future__ import annotations

import math

import pytest
import torch

from tests.trainer_runs import LOOPED, Probe, build, component, run, same_tensors
from trainer.averaging import EMA
from trainer.components import WEIGHTS_FILE
from trainer.hooks import NoHooks
from trainer.qat import LateQAT
from trainer.recurrence import DelayedRecurrence


class CheckpointAt(NoHooks):
    """A report after every step; saves a checkpoint at the given steps."""

    def __init__(self, steps, folder):
        self.steps, self.folder = steps, folder

    def next_report_s(self, train_s):
        return math.nextafter(train_s, math.inf)

    def report(self, metrics, save_checkpoint):
        if metrics["step"] in self.steps:
            save_checkpoint(self.folder / f"step{metrics['step']}")


@pytest.fixture
def recipe(tiny_config_dict):
    """The record's techniques on a tiny looped model: recurrence from step 5 of 12, late QAT from step 10, EMA."""
    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(max_steps=12, warmdown_steps=4, budget_s=1000.0, average="ema", ema_decay=0.8,
                                     recurrence_start_fraction=0.4, late_qat_lr_scale=0.6, late_qat_bits=6)
    return tiny_config_dict


def test_resume_from_a_checkpoint_ends_with_the_uninterrupted_run_s_weights(tiny_corpus, recipe, tmp_path):
    hooks = CheckpointAt((3, 7, 11), tmp_path / "ckpt")
    _, full, probe = run(tiny_corpus, recipe, tmp_path / "full", hooks=hooks, save_weights=True)
    assert probe.modes == [False] * 5 + [True] * 7 and probe.quantized == [False] * 10 + [True] * 2
    expected = torch.load(tmp_path / "full" / WEIGHTS_FILE, weights_only=True)
    # Before the switch, after it, and with QAT on: each resumed run switches (or stays) as the full one did.
    for step in (3, 7, 11):
        out = tmp_path / f"resumed{step}"
        trainer, resumed, probe = run(tiny_corpus, recipe, out, resume_from=tmp_path / "ckpt" / f"step{step}",
                                      save_weights=True)
        assert resumed.steps == 12 and probe.modes == ([False] * 5 + [True] * 7)[step:]
        assert probe.quantized == ([False] * 10 + [True] * 2)[step:]
        assert same_tensors(torch.load(out / WEIGHTS_FILE, weights_only=True), expected), step
        assert resumed.val_bpb == full.val_bpb and resumed.val_bpb_prequant_raw == full.val_bpb_prequant_raw
        assert component(trainer, DelayedRecurrence).switch_step == 5 and component(trainer, LateQAT).start_step == 10


def test_rewind_restores_every_component_s_state(tiny_corpus, recipe, tmp_path):
    trainer = build(tiny_corpus, recipe, tmp_path)
    trainer.warm_up_and_wait()
    for c in trainer.components:
        c.on_train_start(trainer)
    saved = trainer.snapshot()
    saved_ema = saved[3][2]["average"]  # the snapshot's copy: the component's own dict moves on
    # What fit does for the steps at progress 0.5 and LR scale 0.5: recurrence and QAT switch on, the EMA moves.
    for c in trainer.components:
        c.before_step(trainer, 6, 0.0, 0.5)
    trainer.train_step(6, 0.0, 0.5)
    for c in trainer.components:
        c.after_step(trainer, 7, 0.5)
    ema, qat = component(trainer, EMA), component(trainer, LateQAT)
    assert trainer.model.recurrence_active and bool(qat.fake_quant.on)
    assert not same_tensors(ema.average, saved_ema)
    trainer.rewind(saved)
    assert not trainer.model.recurrence_active and not bool(qat.fake_quant.on) and qat.start_step is None
    assert same_tensors(ema.average, saved_ema) and ema.average is not saved_ema and ema.recurrence_on is False
    assert same_tensors(trainer.model.state_dict(), saved[0])
    assert isinstance(trainer.components[-1], Probe)


def test_a_checkpoint_of_another_config_is_refused(tiny_corpus, recipe, tmp_path):
    hooks = CheckpointAt((2,), tmp_path / "ckpt")
    run(tiny_corpus, recipe, tmp_path / "full", hooks=hooks)
    recipe["train"].update(average="none")
    trainer = build(tiny_corpus, recipe, tmp_path / "other")
    with pytest.raises(ValueError, match="saved state holds 4 components, this run has 3"):
        trainer.resume(tmp_path / "ckpt" / "step2")
