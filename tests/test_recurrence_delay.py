"""Delayed recurrence (train.recurrence_start_fraction): the switch at exactly its step, warm-up in both schedules,
the switch at the end of a run that stopped before it, and MFU counted per schedule."""
from __future__ import annotations

import pytest
import torch

from tests.trainer_runs import LOOPED, build, component, run
from trainer import artifact
from trainer import run_config as config
from trainer.flops import flops_per_token
from trainer.recurrence import DelayedRecurrence, repeat_mlp_sources, training_progress
from trainer.trainer import Trainer


def test_progress_is_the_larger_fraction_of_either_bound():
    tc = config.TrainConfig(max_steps=1000, budget_s=100.0)
    assert training_progress(tc, 100, 5.0) == 0.1  # the steps bind
    assert training_progress(tc, 100, 60.0) == 0.6  # the clock binds
    # The parity config's fraction, 480 of 654 steps, written to 16 digits: exactly step 480.
    parity = config.TrainConfig(max_steps=654, budget_s=1e9)
    assert training_progress(parity, 480, 1.0) >= 0.7339449541284404 > training_progress(parity, 479, 1.0)


def test_recurrence_switches_on_at_exactly_its_step(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(recurrence_start_fraction=0.3, max_steps=10, budget_s=1000.0)
    trainer, metrics, probe = run(tiny_corpus, tiny_config_dict, tmp_path)
    # Steps 0..2 run at progress 0, 0.1, 0.2 without the repeats; step 3 (progress 0.3) is the first with them.
    assert probe.modes == [False] * 3 + [True] * 7
    assert component(trainer, DelayedRecurrence).switch_step == 3
    # At the switch each repeat's MLP started as its block's: the weights before step 3 (after step 2) show it.
    before = probe.weights[2]
    assert any(not torch.equal(before[r], before[b]) for r, b in repeat_mlp_sources(trainer.cfg.model).items())
    log = (tmp_path / "train.log").read_text()
    assert "recurrence on from step 3 (progress 0.3000, start fraction 0.3): 4 virtual layers" in log
    # MFU counts 3 steps in the 2-layer schedule and 7 in the 4-layer one.
    f_off, f_on = (flops_per_token(trainer.cfg.model, 32, recurrence_on=on) for on in (False, True))
    assert f_off < f_on and metrics.flops_per_token == pytest.approx((3 * f_off + 7 * f_on) / 10, rel=1e-12)
    assert metrics.mfu == pytest.approx(metrics.flops_per_token * metrics.tokens_per_s / 989e12, rel=1e-9)


def test_a_run_that_ends_before_the_switch_switches_on_for_the_export(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(recurrence_start_fraction=0.9, max_steps=6, budget_s=1000.0)
    trainer, metrics, probe = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    assert probe.modes == [False] * 6 and trainer.model.recurrence_active and metrics.virtual_layers == 4
    assert "training ended at step 6 before recurrence's start (fraction 0.9): switched on now" in (
        tmp_path / "train.log").read_text()
    # The artifact runs the full schedule with each repeat's MLP a copy of its block's.
    _, stored = artifact.load(tmp_path / "model.ptz")
    for repeat, block in repeat_mlp_sources(trainer.cfg.model).items():
        assert torch.equal(stored[repeat], stored[block])


class CountingTrainer(Trainer):
    """A Trainer that notes the schedule of every training step it takes."""

    def train_step(self, step, train_s, scale=None):
        self.__dict__.setdefault("step_modes", []).append(self.model.recurrence_active)
        return super().train_step(step, train_s, scale)


def test_warm_up_runs_both_schedules_then_starts_without_repeats(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(recurrence_start_fraction=0.5, compile_warmup_steps=2, max_steps=4)
    cfg = config.from_dict(tiny_config_dict)
    trainer = CountingTrainer(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], tmp_path, device="cpu", echo=False)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.warm_up_and_wait()
    assert trainer.step_modes == [False, False, True, True]
    # Rewound: the starting schedule and the initial weights (switching on had copied the MLPs).
    assert not trainer.model.recurrence_active
    assert all(torch.equal(v, initial[k]) for k, v in trainer.model.state_dict().items())
    trainer.fit()
    assert trainer.step_modes[4:] == [False, False, True, True]


def test_a_schedule_without_repeats_has_nothing_to_delay(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(recurrence_start_fraction=0.5)
    trainer = build(tiny_corpus, tiny_config_dict, tmp_path)
    assert not [c for c in trainer.components if isinstance(c, DelayedRecurrence)]
    assert trainer.model.recurrence_active and not trainer.delayed_recurrence


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_the_start_fraction_is_validated(tiny_config_dict, value):
    tiny_config_dict["train"]["recurrence_start_fraction"] = value
    with pytest.raises(config.ConfigError, match=r"train.recurrence_start_fraction: .* must be in \[0, 1\)"):
        config.from_dict(tiny_config_dict)


@pytest.mark.parametrize("start_fraction", [0.9, 0.5])
def test_ddp_trains_while_the_repeats_get_no_gradient(tiny_corpus, tiny_config_dict, tmp_path, start_fraction):
    import os
    import subprocess
    import sys

    import yaml

    from trainer.components import WEIGHTS_FILE

    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(recurrence_start_fraction=start_fraction, max_steps=4, adam_weight_decay=0.5,
                                     muon_weight_decay=0.5, late_qat_lr_scale=0.6)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict))
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "trainer",
         "train", "--config", str(path), "--device", "cpu", "--data", str(tiny_corpus["data"]),
         "--tokenizer", str(tiny_corpus["tokenizer"]), "--out", str(out), "--save-weights"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "late QAT on from step 2" in log
    if start_fraction == 0.5:  # both ranks switch on at step 2 and train the repeats from there
        assert "recurrence on from step 2" in log and "training ended" not in log
        return
    assert "training ended at step 4 before recurrence's start" in log
    # The repeats' own scalars ran nowhere, so neither the optimizers nor their weight decay touched them.
    torch.manual_seed(1337)
    initial = build(tiny_corpus, tiny_config_dict, tmp_path / "fresh").model.state_dict()
    trained = torch.load(out / WEIGHTS_FILE, weights_only=True)
    for name in ("layers.2.mlp_scale", "layers.3.attn_scale", "layers.2.resid_mix"):
        assert torch.equal(trained[name], initial[name]), name
    assert not torch.equal(trained["layers.1.mlp_scale"], initial["layers.1.mlp_scale"])
