"""A search trial's hooks into the trainer (search.tune.rungs), for real on the CPU with a tiny model: when it
reports, how it scores a rung (round trip, cooldown), its turn on a shared device and the warm-up it retries."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from search.settings import SearchSettings, SettingsError
from search.tune.rungs import RungPlan, TrialHooks
from trainer.device_lease import is_out_of_memory
from trainer import artifact
from trainer import run_config as config
from trainer.bpb import byte_table
from trainer.data.shards import load_val_tokens
from trainer.evaluate import evaluate
from trainer.model import GPT
from trainer.train import train


def run(tiny_corpus, cfg_dict, out, **kw):
    cfg = config.from_dict(cfg_dict)
    return train(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], out, device="cpu", echo=False, **kw).to_dict()


def hooks(send=lambda m, s: None, take_turn=None, **plan):
    """A trial's hooks with this plan; reports go to send(metrics, save_checkpoint)."""
    return TrialHooks(RungPlan(**plan), send, take_turn=take_turn)


def test_next_report_is_the_earlier_of_both_schedules():
    at_only = RungPlan(at_s=(20.0, 60.0))
    assert [at_only.next_report_s(s) for s in (0.0, 19.9, 20.0, 20.3, 59.0, 60.5)] == [20, 20, 60, 60, 60, None]
    both = RungPlan(at_s=(20.0, 60.0), every_s=25.0)
    assert [both.next_report_s(s) for s in (0.0, 20.1, 25.2, 50.0, 60.1, 75.0)] == [20, 25, 50, 60, 75, 100]
    assert RungPlan().next_report_s(5.0) is None  # no schedule: no reports
    assert RungPlan(every_s=10.0).next_report_s(25.0) == 30.0


def test_a_search_s_plan_is_its_rungs_and_its_scoring(tmp_path):
    settings = SearchSettings(name="s", space="x.yaml", storage=str(tmp_path), data_dir="d", tokenizer="t",
                              budget_s=180, grace_s=20, report_every_s=30.0, rung_roundtrip=True,
                              rung_cooldown_fraction=0.1).validate()
    assert RungPlan.from_settings(settings) == RungPlan((20.0, 60.0), 30.0, True, 0.1)


@pytest.mark.parametrize("report_at_s, report_every_s, expected", [
    ((0.2, 0.6), 0.0, [0.2, 0.6]),  # only the listed times (a search's ASHA rungs)
    ((0.2, 0.6), 0.4, [0.2, 0.4, 0.6, 0.8]),  # both schedules; 0.4 and 0.8 are periodic, 0.6 is listed
    ((0.2, 0.4), 0.2, [0.2, 0.4, 0.6, 0.8]),  # times on both schedules report once
])
def test_reports_once_per_scheduled_time_crossed(tiny_corpus, tiny_config_dict, tmp_path, report_at_s,
                                                 report_every_s, expected, virtual_clock):
    virtual_clock.steps_take(1 / 16)  # steps of 62.5 ms, on any machine: the 1 s budget ends at step 16
    tiny_config_dict["train"].update(max_steps=1_000_000, budget_s=1.0)
    reports = []
    trial = hooks(lambda m, save: reports.append(m["train_s"]), at_s=report_at_s, every_s=report_every_s)
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path, hooks=trial)
    assert metrics["steps"] == 16 and metrics["train_s"] == 1.0
    # Each report comes on the first step past its time, before the next time.
    assert len(reports) == len(expected), reports
    for train_s, due, following in zip(reports, expected, expected[1:] + [metrics["train_s"]]):
        assert due <= train_s < following, (reports, expected)
    assert reports == [math.ceil(16 * due) / 16 for due in expected]  # e.g. 0.2 s is reached at step 4, 0.25 s


def _rescore_checkpoint(save_checkpoint, path: Path, cfg, tiny_corpus, roundtrip: bool) -> float:
    """Save a rung's checkpoint to path and score its weights on the val prefix (after the export's round trip,
    if asked), as the rung should have."""
    save_checkpoint(path)
    state = torch.load(path / "trainer_state.rank0.pt", weights_only=True)
    model = GPT(cfg.model)
    model.load_state_dict(artifact.unpack(artifact.pack(state["model"], cfg))[1] if roundtrip else state["model"])
    val_prefix = load_val_tokens(tiny_corpus["data"], 320)[: cfg.train.val_prefix_tokens + 1]
    return evaluate(model, val_prefix, byte_table(tiny_corpus["sp"], 320), cfg.train.seq_len,
                    cfg.train.val_batch_tokens, torch.device("cpu")).val_bpb


def test_rung_roundtrip_scores_the_quantized_weights_and_leaves_training_alone(tiny_corpus, tiny_config_dict,
                                                                               tmp_path, virtual_clock):
    cfg_dict = tiny_config_dict
    virtual_clock.steps_take(1 / 16)  # a report every 0.25 s is one every 4 steps: 7 rungs in 30 steps
    cfg_dict["train"].update(max_steps=30, budget_s=1000.0)
    cfg_dict["export"] = {**cfg_dict.get("export", {}), "quant_bits": 5}
    cfg = config.from_dict(cfg_dict)
    reports, rescored = [], []

    def report(metrics, save_checkpoint):
        reports.append(metrics)
        if len(reports) <= 2:  # rescore from the rung's checkpoint: the weights the rung evaluated
            rescored.append(_rescore_checkpoint(save_checkpoint, tmp_path / f"ckpt{len(reports)}", cfg,
                                                tiny_corpus, roundtrip=True))

    with_roundtrip = run(tiny_corpus, cfg_dict, tmp_path / "on", hooks=hooks(report, every_s=0.25, roundtrip=True))
    assert [r["step"] for r in reports] == [4, 8, 12, 16, 20, 24, 28]
    for rung, again in zip(reports, rescored):
        assert rung["val_bpb"] == pytest.approx(again, abs=1e-6)
        assert rung["val_bpb"] != rung["val_bpb_prequant"]  # int5 changes the score
    without = run(tiny_corpus, cfg_dict, tmp_path / "off", hooks=hooks(every_s=0.25, roundtrip=False))
    # The round trip is scored on a copy: training continues from the unquantized weights, step for step.
    assert with_roundtrip["val_bpb_prequant"] == pytest.approx(without["val_bpb_prequant"], abs=1e-6)


def test_rung_cooldown_scores_a_cooled_copy_and_leaves_training_alone(tiny_corpus, tiny_config_dict, tmp_path,
                                                                     virtual_clock):
    virtual_clock.steps_take(1 / 16)  # a report every 0.25 s is one every 4 steps: 7 rungs in 30 steps
    cfg_dict = tiny_config_dict
    cfg_dict["train"].update(max_steps=30, budget_s=1000.0)
    cfg = config.from_dict(cfg_dict)
    reports, rescored = [], []

    def report(metrics, save_checkpoint):
        reports.append(metrics)
        if len(reports) <= 2:  # the rung's checkpoint holds the weights before the cooldown: training's own
            rescored.append(_rescore_checkpoint(save_checkpoint, tmp_path / f"ckpt{len(reports)}", cfg,
                                                tiny_corpus, roundtrip=False))

    cooled = run(tiny_corpus, cfg_dict, tmp_path / "on", hooks=hooks(report, every_s=0.25, cooldown_fraction=0.25))
    assert [r["step"] for r in reports] == [4, 8, 12, 16, 20, 24, 28]
    for rung, again in zip(reports, rescored):
        assert rung["val_bpb_before_cooldown"] == pytest.approx(again, abs=1e-6)
    for rung in reports:
        assert rung["cooldown_steps"] == max(1, round(0.25 * rung["step"]))
        assert rung["val_bpb"] == rung["val_bpb_prequant"]  # no round trip asked: one score
    assert any(r["val_bpb"] < r["val_bpb_before_cooldown"] for r in reports)  # decaying the LR helps at some rung
    without = run(tiny_corpus, cfg_dict, tmp_path / "off", hooks=hooks(every_s=0.25, cooldown_fraction=0.0))
    # Model, optimizers and data position are rewound after each cooldown: training goes on step for step.
    assert cooled["steps"] == without["steps"]
    assert cooled["val_bpb_prequant"] == pytest.approx(without["val_bpb_prequant"], abs=1e-6)


def test_cooldown_scales_decay_linearly_and_the_fraction_is_validated(tmp_path):
    from trainer.optim import cooldown_scales

    assert cooldown_scales(0.8, 4) == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert cooldown_scales(1.0, 1) == [1.0]
    with pytest.raises(SettingsError, match="--rung-cooldown-fraction"):
        SearchSettings(name="s", space="x.yaml", storage=str(tmp_path), data_dir="d", tokenizer="t",
                       rung_cooldown_fraction=0.6).validate()


def test_the_turn_is_taken_once_after_warmup_and_its_wait_is_not_training(tiny_corpus, tiny_config_dict,
                                                                         tmp_path, virtual_clock):
    # A trial sharing its GPU waits for its turn: the wait is reported apart and never eats the budget.
    virtual_clock.steps_take(1 / 16)  # the 0.625 s budget ends at step 10, the 0.2 s rung comes at step 4
    tiny_config_dict["train"].update(max_steps=1_000_000, budget_s=0.625, compile_warmup_steps=2)
    events = []

    def take_turn():
        events.append(("before", len(events)))
        virtual_clock.advance(0.5)  # the other trial's half second on the device

    reports = []
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path,
                  hooks=hooks(lambda m, save: reports.append(m), take_turn, at_s=(0.2,)))
    assert events == [("before", 0)]
    assert metrics["wait_s"] == 0.5 and metrics["train_s"] == 0.625 and metrics["steps"] == 10
    assert metrics["compile_s"] == 2 / 16  # the two warm-up steps
    assert metrics["wall_s"] >= metrics["startup_s"] + metrics["compile_s"] + metrics["wait_s"] + metrics["train_s"]
    # Rung reports carry the time before training, so a trial ASHA stops still accounts for it.
    (rung,) = reports
    assert rung["step"] == 4 and rung["train_s"] == 0.25
    assert rung["wait_s"] == metrics["wait_s"] and rung["compile_s"] == metrics["compile_s"] > 0
    assert "waited 0.5s for the device" in (tmp_path / "train.log").read_text()


def test_a_trial_hands_its_device_on_once_after_its_last_evaluation(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(max_steps=6, budget_s=1000.0)
    events = []
    trial = TrialHooks(RungPlan(at_s=(1e-4,)), lambda m, save: events.append("report"),
                       take_turn=lambda: events.append("take_turn"), hand_on=lambda: events.append("hand_on"))
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path, hooks=trial)
    assert events == ["take_turn", "report", "hand_on"] and metrics["steps"] == 6


# Both ways a GPU says it is full: the caching allocator's error, and the driver's when a compiled kernel's launch
# finds no memory (the 14-layer preset in a search on an H100, beside a trial in training).
OUT_OF_MEMORY = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                 RuntimeError("CUDA driver error: out of memory")]


@pytest.mark.parametrize("shares_gpu", [True, False])
@pytest.mark.parametrize("error", OUT_OF_MEMORY, ids=["allocator", "driver"])
def test_a_warmup_out_of_memory_waits_for_the_turn_and_warms_up_again(tiny_corpus, tiny_config_dict, tmp_path,
                                                                      monkeypatch, shares_gpu, error):
    # Beside the trial that holds a shared GPU a warm-up can run out of memory; with a turn to wait for, the
    # trial takes it and warms up again from the same initial weights, so it trains as an unshared run would.
    import trainer.trainer as trainer_module

    class OutOfMemoryOnce(trainer_module.GPT):
        calls = 0

        def forward(self, *args, **kwargs):
            type(self).calls += 1
            if type(self).calls == 2:  # inside the second warm-up step, after one optimizer step
                raise error
            return super().forward(*args, **kwargs)

    tiny_config_dict["train"].update(compile_warmup_steps=3, max_steps=6)
    reference = run(tiny_corpus, tiny_config_dict, tmp_path / "reference")
    monkeypatch.setattr(trainer_module, "GPT", OutOfMemoryOnce)
    turns = []
    if not shares_gpu:
        with pytest.raises(type(error)):
            run(tiny_corpus, tiny_config_dict, tmp_path / "alone")
        return
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path / "shared", hooks=hooks(take_turn=lambda: turns.append(1)))
    assert turns == [1]  # the turn is taken once, before the second warm-up
    assert metrics["val_bpb_prequant"] == pytest.approx(reference["val_bpb_prequant"], abs=1e-6)
    assert "warming up again once it holds the device" in (tmp_path / "shared" / "train.log").read_text()


def test_only_out_of_memory_errors_count_as_a_full_gpu():
    assert all(is_out_of_memory(e) for e in OUT_OF_MEMORY)
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_out_of_memory(ValueError("CUDA driver error: out of memory"))
