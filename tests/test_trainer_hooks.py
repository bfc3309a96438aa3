"""The Trainer's hooks and components, on the CPU with a tiny model: which calls come, in which order, with what."""
from __future__ import annotations

import re

import pytest

from trainer import run_config as config
from trainer.components import Component
from trainer.hooks import NoHooks, StopRequested
from trainer.optim import lr_scale
from trainer.train import train
from trainer.trainer import Trainer


class Recorder(NoHooks):
    """Hooks that record every call with where the run stood, report at the given training seconds and stop at
    a given step."""

    def __init__(self, report_at_s=(), stop_at_step=None):
        self.report_at_s, self.stop_at_step = list(report_at_s), stop_at_step
        self.calls, self.asked, self.logs = [], [], []
        self.trainer = None

    def attach(self, trainer):
        self.trainer = trainer
        self.calls.append(("attach", trainer.step))

    def ready(self):
        self.calls.append(("ready", self.trainer.step))

    def should_stop(self):
        self.calls.append(("should_stop", self.trainer.step))
        return self.trainer.step == self.stop_at_step

    def next_report_s(self, train_s):
        due = min((t for t in self.report_at_s if t > train_s), default=None)
        self.asked.append((train_s, due))
        return due

    def report(self, metrics, save_checkpoint):
        self.calls.append(("report", metrics["step"]))
        self.reports = getattr(self, "reports", []) + [metrics]

    def on_log(self, step):
        self.calls.append(("log", step.step))
        self.logs.append(step)


def run(tiny_corpus, cfg_dict, out, hooks):
    cfg = config.from_dict(cfg_dict)
    return train(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], out, hooks=hooks, device="cpu", echo=False)


def test_hooks_are_called_in_order_and_reports_come_when_asked(tiny_corpus, tiny_config_dict, tmp_path,
                                                                virtual_clock):
    # Steps of 1/16 s on a virtual clock: the 1 s budget ends the run at step 16, whatever the machine's load.
    virtual_clock.steps_take(1 / 16)
    tiny_config_dict["train"].update(max_steps=1_000_000, budget_s=1.0, compile_warmup_steps=2, log_every_steps=5)
    hooks = Recorder(report_at_s=(0.2, 0.5))
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path, hooks)
    assert metrics.steps == 16 and metrics.train_s == 1.0
    # The first step at or past each time asked for: 0.25 s (step 4) and 0.5 s (step 8).
    assert [(r["step"], r["train_s"]) for r in hooks.reports] == [(4, 0.25), (8, 0.5)]
    names = [name for name, _ in hooks.calls]
    # Built, warmed up (the warm-up's steps never count), then ready, before the first step.
    assert hooks.calls[:3] == [("attach", 0), ("ready", 0), ("should_stop", 1)]
    assert names.count("attach") == names.count("ready") == 1
    # should_stop is asked after every step, before that step's log line and report.
    assert [step for name, step in hooks.calls if name == "should_stop"] == list(range(1, metrics.steps + 1))
    # A report once the training seconds reach the time asked for; next_report_s is asked again after each,
    # at the report's training seconds (one report however many times a slow step crossed).
    assert hooks.asked[0] == (0.0, 0.2) and len(hooks.asked) == len(hooks.reports) + 1 >= 2
    for report, (_, due), (asked_at, next_due) in zip(hooks.reports, hooks.asked, hooks.asked[1:]):
        assert report["train_s"] >= due and asked_at == report["train_s"]
        assert next_due == min((t for t in (0.2, 0.5) if t > asked_at), default=None)
        assert set(report) >= {"val_bpb", "val_loss", "step", "wait_s", "compile_s"}
    assert [step for name, step in hooks.calls if name == "report"] == [r["step"] for r in hooks.reports]
    # A log line at step 1, every 5 steps and at the last step, each with the line's own figures.
    logged = [s.step for s in hooks.logs]
    assert logged[0] == 1 and logged[-1] == metrics.steps and all(s % 5 == 0 for s in logged[1:-1])
    lines = [ln for ln in (tmp_path / "train.log").read_text().splitlines() if re.search(r"\] step \d+ loss", ln)]
    assert [f"step {s.step} loss {s.loss:.4f} train_s {s.train_s:.1f}" for s in hooks.logs] == [
        re.search(r"step \d+ loss \S+ train_s \S+", ln).group(0) for ln in lines]
    assert all(s.tokens_per_s == pytest.approx(s.step * 512 / s.train_s) for s in hooks.logs)


def test_should_stop_ends_the_run_at_once_without_evaluating_or_exporting(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(max_steps=1000, budget_s=1000.0)
    hooks = Recorder(report_at_s=(1000.0,), stop_at_step=4)
    with pytest.raises(StopRequested, match="step 4"):
        run(tiny_corpus, tiny_config_dict, tmp_path, hooks)
    assert hooks.calls[-1] == ("should_stop", 4) and not hasattr(hooks, "reports")
    assert not (tmp_path / "model.ptz").exists() and not (tmp_path / "metrics.json").exists()


class Callbacks(Component):
    """A component recording its callbacks, with the step and the LR scale it was given."""

    def __init__(self):
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append(("start", trainer.step))

    def after_step(self, trainer, step, lr_scale):
        self.calls.append(("step", step, lr_scale))

    def before_eval(self, trainer):
        self.calls.append(("eval", trainer.step))

    def after_eval(self, trainer):
        self.calls.append(("evaluated", trainer.step))

    def on_train_end(self, trainer):
        self.calls.append(("end", trainer.step))


def test_components_are_called_at_their_points_in_list_order(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(max_steps=12, warmdown_steps=4, budget_s=1000.0)
    cfg = config.from_dict(tiny_config_dict)
    first, second = Callbacks(), Callbacks()
    order = []
    first.on_train_end = lambda trainer: order.append("first")
    second.on_train_end = lambda trainer: order.append("second")
    trainer = Trainer(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], tmp_path, device="cpu", echo=False)
    trainer.components += [first, second]
    trainer.warm_up_and_wait()
    trainer.fit()
    trainer.export()
    assert order == ["first", "second"]
    steps = [c for c in first.calls if c[0] == "step"]
    assert first.calls[0] == ("start", 0) and [s for _, s, _ in steps] == list(range(1, 13))
    # Each step's LR scale is the warmdown's at that step: full, then linear to 0 over the last 4 steps.
    assert [scale for _, _, scale in steps] == [lr_scale(cfg.train, k, 0.0) for k in range(12)]
    assert [scale for _, _, scale in steps][-4:] == [1.0, 0.75, 0.5, 0.25]
    # The export evaluates twice (trained weights, round trip), each between before_eval and after_eval.
    assert first.calls[-4:] == [("eval", 12), ("evaluated", 12), ("eval", 12), ("evaluated", 12)]


def test_done_with_device_comes_after_the_round_trip_evaluation_while_the_artifact_is_written(
        tiny_corpus, tiny_config_dict, tmp_path, monkeypatch):
    import threading

    from trainer import export_pipeline

    handed_on, write = threading.Event(), export_pipeline.timed_write

    def write_once_handed_on(*args, **kwargs):  # the write finishes only after the hook: it must not wait for it
        assert handed_on.wait(timeout=60), "done_with_device was not called while the artifact was being written"
        return write(*args, **kwargs)

    class DeviceRecorder(Recorder):
        def attach(self, trainer):
            super().attach(trainer)
            evaluate = trainer.evaluate
            trainer.evaluate = lambda full=False: (self.calls.append(("evaluate", full)), evaluate(full))[1]

        def done_with_device(self):
            self.calls.append(("done_with_device", (tmp_path / "model.ptz").exists()))
            handed_on.set()

    monkeypatch.setattr(export_pipeline, "timed_write", write_once_handed_on)
    tiny_config_dict["train"].update(max_steps=4, budget_s=1000.0)
    hooks = DeviceRecorder()
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path, hooks)
    # The two whole-split evaluations (before and after the round trip), then the hook, before the file exists.
    assert hooks.calls[-3:] == [("evaluate", True), ("evaluate", True), ("done_with_device", False)]
    assert (tmp_path / "model.ptz").is_file() and metrics.artifact_bytes > 0
