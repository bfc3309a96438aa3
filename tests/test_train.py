import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trainer import artifact
from trainer import run_config as config
from trainer.bpb import byte_table
from trainer.data.shards import load_val_tokens
from trainer.evaluate import evaluate
from trainer.hooks import NoHooks, StopRequested
from trainer.model import GPT
from trainer.train import train
from trainer.trainer import TrainingDiverged

REQUIRED = {"val_bpb", "val_bpb_prequant", "artifact_bytes", "model_bytes", "code_bytes", "unique_params",
            "virtual_layers", "steps", "train_tokens", "train_s", "tokens_per_s"}


def run(tiny_corpus, cfg_dict, out, **kw):
    cfg = config.from_dict(cfg_dict)
    return train(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], out, device="cpu", echo=False, **kw).to_dict()


class ReportEvery(NoHooks):
    """Hooks asking for a report every every_s training seconds, each handed to on_report(metrics, save)."""

    def __init__(self, every_s, on_report):
        self.every_s, self.on_report = every_s, on_report

    def next_report_s(self, train_s):
        return (math.floor(train_s / self.every_s) + 1) * self.every_s

    def report(self, metrics, save_checkpoint):
        self.on_report(metrics, save_checkpoint)


class StopAfter(NoHooks):
    """Hooks whose should_stop() says stop on its `calls`-th call, counting them."""

    def __init__(self, calls):
        self.calls, self.asked = calls, []

    def should_stop(self):
        self.asked.append(1)
        return len(self.asked) >= self.calls


def test_training_lowers_val_bpb_and_writes_everything(tiny_corpus, tiny_config_dict, tmp_path):
    cfg_dict = tiny_config_dict
    cfg_dict["model"].update(unique_blocks=2, virtual_layers=[0, 1, 0, 1])
    cfg_dict["train"].update(max_steps=40, warmdown_steps=10)
    torch.manual_seed(cfg_dict["train"].get("seed", 1337))
    cfg = config.from_dict(cfg_dict)
    untrained = evaluate(GPT(cfg.model), load_val_tokens(tiny_corpus["data"], 320), byte_table(tiny_corpus["sp"], 320),
                         32, 1024, torch.device("cpu"))
    metrics = run(tiny_corpus, cfg_dict, tmp_path)
    assert REQUIRED <= set(metrics)
    assert metrics["steps"] == 40 and metrics["virtual_layers"] == 4
    assert metrics["val_bpb_prequant"] < untrained.val_bpb - 0.3
    assert abs(metrics["val_bpb"] - metrics["val_bpb_prequant"]) < 0.05
    assert metrics["artifact_bytes"] == metrics["model_bytes"] + metrics["code_bytes"]
    assert metrics["model_bytes"] == (tmp_path / "model.ptz").stat().st_size
    assert json.loads((tmp_path / "metrics.json").read_text())["val_bpb"] == metrics["val_bpb"]
    assert "val_bpb" in (tmp_path / "train.log").read_text()
    # The reported val_bpb is the artifact's: score the model loaded back from the file written.
    loaded_cfg, state = artifact.load(tmp_path / "model.ptz")
    restored = GPT(loaded_cfg.model)
    restored.load_state_dict(state)
    again = evaluate(restored, load_val_tokens(tiny_corpus["data"], 320), byte_table(tiny_corpus["sp"], 320),
                     32, 1024, torch.device("cpu"))
    assert again.val_bpb == pytest.approx(metrics["val_bpb"], abs=1e-6)


def test_reports_arrive_on_time_and_resume_continues_exactly(tiny_corpus, tiny_config_dict, tmp_path,
                                                             virtual_clock):
    virtual_clock.steps_take(1 / 16)  # a report every 0.25 s of training is one every 4 steps, on any machine
    cfg_dict = tiny_config_dict
    cfg_dict["train"].update(max_steps=30, budget_s=1000.0)
    reports = []

    def report(metrics, save_checkpoint):
        if not reports:
            save_checkpoint(tmp_path / "ckpt")
        reports.append(metrics)

    full = run(tiny_corpus, cfg_dict, tmp_path / "full", hooks=ReportEvery(0.25, report))
    assert len(reports) >= 2
    assert [r["step"] for r in reports] == sorted(r["step"] for r in reports)
    assert all(r["val_bpb"] > 0 and r["train_s"] > 0 for r in reports)
    assert [(r["step"], r["train_s"]) for r in reports] == [(4 * k, k / 4) for k in range(1, 8)]
    first = reports[0]
    resumed_reports = []
    resumed = run(tiny_corpus, cfg_dict, tmp_path / "resumed",
                  hooks=ReportEvery(0.25, lambda m, s: resumed_reports.append(m)), resume_from=tmp_path / "ckpt")
    assert resumed["steps"] == 30
    assert all(r["step"] > first["step"] for r in resumed_reports)
    # From the checkpoint's step and training seconds on: the same reports as the full run after its first.
    assert [(r["step"], r["train_s"]) for r in resumed_reports] == [(r["step"], r["train_s"]) for r in reports[1:]]
    # Same data position, same optimizer state, step-based schedule: the resumed run ends where the full one did.
    assert resumed["val_bpb_prequant"] == pytest.approx(full["val_bpb_prequant"], abs=1e-5)


def test_startup_phases_are_timed_and_recorded(tiny_corpus, tiny_config_dict, tmp_path):
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path)
    assert metrics["startup_s"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["startup_s"] == metrics["startup_s"]
    assert metrics["wall_s"] >= metrics["startup_s"] + metrics["compile_s"] + metrics["train_s"]
    (line,) = [ln for ln in (tmp_path / "train.log").read_text().splitlines() if "] startup " in ln]
    for phase in ("runtime", "tokenizer", "val", "model", "optimizers", "compile_wrap", "data"):
        assert f" {phase} " in line, line
    assert f"startup {metrics['startup_s']:.2f} s:" in line


def test_divergence_is_reported_not_hidden(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(scalar_lr=1e18, embed_lr=1e18, matrix_lr=1e18, log_every_steps=1)
    with pytest.raises(TrainingDiverged, match="lower the learning rates"):
        run(tiny_corpus, tiny_config_dict, tmp_path)


def write_config(tmp_path, cfg_dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    return path


def test_cli_smoke_writes_metrics(tiny_corpus, tiny_config_dict, tmp_path):
    path = write_config(tmp_path, {"model": tiny_config_dict["model"]})
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--smoke", "--config", str(path), "--set", "model.unique_blocks=1",
         "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"]), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert REQUIRED <= set(metrics) and metrics["unique_params"] > 0
    assert "step 1 loss" in proc.stdout


def test_cli_errors_are_one_clear_line(tiny_corpus, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--set", "model.model_dim=100", "--data", str(tiny_corpus["data"]),
         "--tokenizer", str(tiny_corpus["tokenizer"]), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "model.model_dim" in proc.stderr and "Traceback" not in proc.stderr
    helped = subprocess.run([sys.executable, "-m", "trainer", "train", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--smoke" in helped.stdout


def test_ddp_on_two_cpu_processes(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(max_steps=6)
    path = write_config(tmp_path, tiny_config_dict)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun takes a free rendezvous port, so suites running side by side on one host never clash.
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer",
         "train", "--config", str(path), "--device", "cpu", "--data", str(tiny_corpus["data"]),
         "--tokenizer", str(tiny_corpus["tokenizer"]), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 6
    # Both ranks share one global batch: the tokens counted are the configured global batch per step.
    assert metrics["train_tokens"] == 6 * tiny_config_dict["train"]["batch_tokens"]


def test_should_stop_ends_the_run_at_the_next_step_without_export(tiny_corpus, tiny_config_dict, tmp_path):
    cfg_dict = tiny_config_dict
    cfg_dict["train"].update(max_steps=1000, budget_s=1000.0)
    hooks = StopAfter(3)
    with pytest.raises(StopRequested, match="step 3"):
        run(tiny_corpus, cfg_dict, tmp_path, hooks=hooks)
    assert len(hooks.asked) == 3 and not (tmp_path / "model.ptz").exists()


def test_gpu_runs_pin_the_cpu_thread_count_whatever_the_launcher_set():
    """Inductor's cache key holds the thread count: a Ray trial (OMP_NUM_THREADS = its CPUs) and a torchrun rerun
    of one shape must agree on it, or each compiles cold."""
    code = ("import torch; from trainer.runtime import pin_cpu_threads; pin_cpu_threads(); "
            "print(torch.get_num_threads())")
    counts = set()
    for omp in ("1", "2", "5"):
        env = dict(os.environ, OMP_NUM_THREADS=omp)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        counts.add(int(out.stdout.strip()))
    assert counts == {min(8, os.cpu_count() or 1)}
