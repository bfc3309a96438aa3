"""The LR warmdown (in steps and in remaining wallclock) and the Muon momentum warm-up, against hand-computed values."""
from __future__ import annotations

import pytest

from trainer import run_config as config
from trainer.model import GPT
from trainer.optim import Muon, build_optimizers, lr_scale, muon_momentum, set_schedule
from trainer.run_config import TrainConfig


def test_warmdown_in_steps_is_linear_to_zero_over_the_last_warmdown_steps():
    cfg = TrainConfig(max_steps=100, warmdown_steps=10, budget_s=1e9)
    # Full LR until step 90; then (100 - step) / 10.
    assert [lr_scale(cfg, step, train_s=0.0) for step in (0, 89, 90, 95, 99, 100, 120)] == [
        1.0, 1.0, 1.0, 0.5, pytest.approx(0.1), 0.0, 0.0]


def test_warmdown_in_wallclock_follows_the_seconds_left_at_the_measured_step_time():
    """Steps of 1 s (train_s = step) in a 100 s budget: the last 10 steps' worth of seconds decay the LR
    linearly, whatever max_steps allows."""
    cfg = TrainConfig(max_steps=1_000_000, warmdown_steps=10, budget_s=100.0)
    assert lr_scale(cfg, 50, train_s=50.0) == 1.0  # 50 s left = 50 steps: before the warmdown
    assert lr_scale(cfg, 90, train_s=90.0) == 1.0  # 10 s left = exactly the warmdown's 10 steps
    assert lr_scale(cfg, 95, train_s=95.0) == pytest.approx(0.5)  # 5 s left of 10 steps x 1 s
    assert lr_scale(cfg, 98, train_s=98.0) == pytest.approx(0.2)
    assert lr_scale(cfg, 100, train_s=100.0) == 0.0 and lr_scale(cfg, 101, train_s=101.0) == 0.0
    # Slower steps (2 s each) start the warmdown earlier: 20 s left is 10 steps' worth.
    assert lr_scale(cfg, 40, train_s=80.0) == 1.0 and lr_scale(cfg, 45, train_s=90.0) == pytest.approx(0.5)
    # Whichever of steps and seconds runs out first sets the scale.
    both = TrainConfig(max_steps=100, warmdown_steps=10, budget_s=100.0)
    assert lr_scale(both, 95, train_s=50.0) == 0.5  # steps bind: 5 of 10 left; 50 s is far from the end
    assert lr_scale(both, 50, train_s=97.0) == pytest.approx(3 / 19.4)  # seconds bind: 3 s / (10 x 1.94 s)
    assert lr_scale(TrainConfig(warmdown_steps=0, budget_s=1.0), 10, train_s=5.0) == 1.0  # no warmdown at all


def test_muon_momentum_warms_up_from_its_start_value_to_its_target():
    cfg = TrainConfig(muon_momentum=0.95, muon_momentum_warmup_start=0.85, muon_momentum_warmup_steps=100)
    values = [muon_momentum(cfg, step) for step in (0, 25, 50, 100, 500)]
    assert values == pytest.approx([0.85, 0.875, 0.90, 0.95, 0.95])
    assert muon_momentum(TrainConfig(muon_momentum=0.9, muon_momentum_warmup_steps=0), 0) == 0.9


def test_set_schedule_gives_every_group_its_scaled_lr_and_muon_its_momentum():
    cfg = config.from_dict({"model": {"vocab_size": 64, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1,
                                      "unique_blocks": 1},
                            "train": {"max_steps": 100, "warmdown_steps": 10, "budget_s": 1e9, "matrix_lr": 0.02,
                                      "scalar_lr": 0.04, "embed_lr": 0.06, "muon_momentum": 0.95,
                                      "muon_momentum_warmup_start": 0.85, "muon_momentum_warmup_steps": 20}})
    optimizers = build_optimizers(GPT(cfg.model), cfg.train)
    set_schedule(optimizers, cfg.train, step=95, train_s=1.0)  # 5 of 10 warmdown steps left: half the LR
    lrs = [group["lr"] for opt in optimizers for group in opt.param_groups]
    assert lrs == pytest.approx([0.03, 0.01, 0.02])  # embeddings (Adam), matrices (Muon), scalars (Adam)
    muon = next(opt for opt in optimizers if isinstance(opt, Muon))
    assert all(group["momentum"] == pytest.approx(0.95) for group in muon.param_groups)
    set_schedule(optimizers, cfg.train, step=10, train_s=1.0)
    assert all(group["momentum"] == pytest.approx(0.90) for group in muon.param_groups)  # half-way through
    assert [group["lr"] for opt in optimizers for group in opt.param_groups] == pytest.approx([0.06, 0.02, 0.04])
