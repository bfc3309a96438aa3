"""Weight averaging (train.average): EMA against its closed form, SWA as the mean of its snapshots, and the averaged
weights in the final evaluation, weights.pt and the artifact."""
from __future__ import annotations

import pytest
import torch

from tests.trainer_runs import LOOPED, build, component, run
from trainer import artifact
from trainer.averaging import EMA, SWA, ema_update
from trainer.components import WEIGHTS_FILE
from trainer.metrics import RunMetrics
from trainer.recurrence import repeat_mlp_sources


def test_ema_update_is_the_convex_step():
    average = {"w": torch.tensor([1.0, -2.0])}
    ema_update(average, {"w": torch.tensor([3.0, 2.0])}, decay=0.75)
    assert torch.allclose(average["w"], torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * -2 + 0.25 * 2]))


def test_ema_after_n_known_updates_is_the_closed_form(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(average="ema", ema_decay=0.9)
    trainer = build(tiny_corpus, tiny_config_dict, tmp_path)
    ema = component(trainer, EMA)
    w0 = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    ema.on_train_start(trainer)
    # Known weights after each step k: w_k = w_0 * (1 + k / 10) + k.
    n, decay = 7, 0.9
    for k in range(1, n + 1):
        trainer.model.load_state_dict({name: w * (1 + k / 10) + k for name, w in w0.items()})
        ema.after_step(trainer, k, 1.0)
    for name, w in w0.items():
        w64 = w.double()
        closed = decay**n * w64 + sum((1 - decay) * decay ** (n - k) * (w64 * (1 + k / 10) + k)
                                      for k in range(1, n + 1))
        assert torch.allclose(ema.average[name].double(), closed, rtol=1e-6, atol=1e-5), name
        assert ema.average[name].dtype == torch.float32


def test_a_trained_ema_run_evaluates_saves_and_exports_the_average(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(average="ema", ema_decay=0.8, max_steps=10, budget_s=1000.0)
    trainer, metrics, probe = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    assert metrics.steps == 10
    # The closed form over the weights after every step, from the initial weights.
    torch.manual_seed(1337)
    initial = build(tiny_corpus, tiny_config_dict, tmp_path / "fresh").model.state_dict()
    expected = {}
    for name, w in initial.items():
        acc = w.double() * 0.8**10
        for k in range(1, 11):
            acc = acc + 0.2 * 0.8 ** (10 - k) * probe.weights[k][name].double()
        expected[name] = acc
    saved = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    for name in expected:
        assert torch.allclose(saved[name].double(), expected[name], rtol=1e-5, atol=1e-6), name
    # The raw weights were scored too, and differ from the average's score.
    assert metrics.val_bpb_prequant_raw is not None and metrics.val_bpb_prequant_raw != metrics.val_bpb_prequant
    assert RunMetrics.read(tmp_path / "metrics.json").val_bpb_prequant_raw == metrics.val_bpb_prequant_raw
    # The artifact holds the average's quantized weights, not the raw ones.
    _, stored = artifact.load(tmp_path / "model.ptz")
    from_average = artifact.unpack(artifact.pack(saved, trainer.cfg))[1]
    from_raw = artifact.unpack(artifact.pack(probe.weights[10], trainer.cfg))[1]
    assert all(torch.equal(stored[k], from_average[k]) for k in stored)
    assert not all(torch.equal(stored[k], from_raw[k]) for k in stored)
    log = (tmp_path / "train.log").read_text()
    assert "val_bpb_prequant_raw" in log and "EMA replaces them" in log


def test_swa_is_the_exact_mean_of_its_snapshots_at_the_right_steps(tiny_corpus, tiny_config_dict, tmp_path):
    # 12 steps, a 4-step warmdown: steps 10, 11, 12 (from 1) run at LR scales 0.75, 0.5, 0.25.
    tiny_config_dict["train"].update(average="swa", swa_every_steps=2, swa_start_lr_scale=0.8, max_steps=12,
                                     warmdown_steps=4, budget_s=1000.0)
    trainer, metrics, probe = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    swa = component(trainer, SWA)
    assert probe.scales[9:] == [0.75, 0.5, 0.25]
    assert swa.snapshot_steps == [10, 12] and swa.count == 2  # every 2nd step, once the scale is below 0.8
    saved = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    for name, value in saved.items():
        assert torch.equal(value, (probe.weights[10][name] + probe.weights[12][name]) / 2), name
    assert metrics.val_bpb_prequant_raw is not None


def test_swa_without_a_snapshot_keeps_the_trained_weights(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(average="swa", swa_start_lr_scale=0.1, max_steps=6, warmdown_steps=2)
    trainer, metrics, probe = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    saved = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    assert all(torch.equal(saved[k], probe.weights[6][k]) for k in saved)
    assert metrics.val_bpb_prequant_raw is None
    assert "SWA: nothing averaged by step 6" in (tmp_path / "train.log").read_text()


def test_at_the_recurrence_switch_a_repeat_s_average_starts_as_its_block_s(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(average="ema", ema_decay=0.5, recurrence_start_fraction=0.5, max_steps=8,
                                     budget_s=1000.0)
    trainer, _, probe = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    assert probe.modes == [False] * 4 + [True] * 4
    sources = repeat_mlp_sources(trainer.cfg.model)
    assert sources == {"mlps.2.fc.weight": "mlps.0.fc.weight", "mlps.2.proj.weight": "mlps.0.proj.weight",
                       "mlps.3.fc.weight": "mlps.1.fc.weight", "mlps.3.proj.weight": "mlps.1.proj.weight"}
    # Replay the EMA: before the switch a repeat's average follows its block's weights, then its own.
    torch.manual_seed(1337)
    average = {k: v.float().clone() for k, v in build(tiny_corpus, tiny_config_dict, tmp_path / "fresh")
               .model.state_dict().items()}
    for k in range(1, 9):
        if k == 5:
            for repeat, block in sources.items():
                average[repeat] = average[block].clone()
        ema_update(average, probe.weights[k], 0.5)
    saved = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    for name in saved:
        assert torch.allclose(saved[name], average[name], rtol=1e-6, atol=1e-7), name


def test_an_ema_restarted_at_the_recurrence_switch_averages_only_looped_steps(tiny_corpus, tiny_config_dict,
                                                                             tmp_path):
    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(average="ema", ema_decay=0.5, recurrence_start_fraction=0.5, max_steps=8,
                                     budget_s=1000.0, average_restart_at_recurrence=True)
    trainer, _, probe = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    assert probe.modes == [False] * 4 + [True] * 4
    # The average is the weights after step 5 (the first looped step), then the EMA of steps 6..8.
    average = {k: v.clone() for k, v in probe.weights[5].items()}
    for k in range(6, 9):
        ema_update(average, probe.weights[k], 0.5)
    saved = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    for name in saved:
        assert torch.allclose(saved[name], average[name], rtol=1e-6, atol=1e-7), name
    assert "EMA: restarted at step 5, where recurrence switched on" in (tmp_path / "train.log").read_text()


def test_a_run_that_ends_before_the_switch_keeps_its_average(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(average="ema", ema_decay=0.5, recurrence_start_fraction=0.9, max_steps=6,
                                     budget_s=1000.0, average_restart_at_recurrence=True)
    trainer, _, probe = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    assert probe.modes == [False] * 6  # no looped step: the switch at the end does not restart the average
    torch.manual_seed(1337)
    average = {k: v.float().clone() for k, v in build(tiny_corpus, tiny_config_dict, tmp_path / "fresh")
               .model.state_dict().items()}
    for k in range(1, 7):
        ema_update(average, probe.weights[k], 0.5)
    for repeat, block in repeat_mlp_sources(trainer.cfg.model).items():
        average[repeat] = average[block].clone()
    saved = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    for name in saved:
        assert torch.allclose(saved[name], average[name], rtol=1e-6, atol=1e-7), name
    assert "restarted" not in (tmp_path / "train.log").read_text()


def test_swa_restarted_at_the_recurrence_switch_drops_the_earlier_snapshots(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["model"].update(LOOPED)
    tiny_config_dict["train"].update(average="swa", swa_every_steps=2, swa_start_lr_scale=1.0, max_steps=8,
                                     warmdown_steps=8, recurrence_start_fraction=0.5, budget_s=1000.0,
                                     average_restart_at_recurrence=True)
    trainer, _, probe = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    swa = component(trainer, SWA)
    assert swa.snapshot_steps == [6, 8] and swa.count == 2  # 2 and 4 were taken, then dropped at step 5
    saved = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    for name, value in saved.items():
        assert torch.allclose(value, (probe.weights[6][name] + probe.weights[8][name]) / 2), name


@pytest.mark.parametrize("key, value, problem", [
    ("average", "mean", "is not one of"), ("ema_decay", 1.0, r"must be in \(0, 1\)"),
    ("swa_every_steps", 0, "at least 1"), ("swa_start_lr_scale", 0.0, r"must be in \(0, 1\]"),
    ("average_restart_at_recurrence", True, "needs train.average"),
])
def test_bad_averaging_settings_name_the_key(tiny_config_dict, key, value, problem):
    from trainer import run_config as config

    tiny_config_dict["train"][key] = value
    with pytest.raises(config.ConfigError, match=f"train.{key}: .*{problem}"):
        config.from_dict(tiny_config_dict)
