import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainer import artifact
from trainer import run_config as config
from trainer.bpb import byte_table
from trainer.data.shards import load_val_tokens
from trainer.evaluate import evaluate
from trainer.model import GPT
from trainer.train import StopRequested, TrainingDiverged, train

REQUIRED = {"val_bpb", "val_bpb_prequant", "artifact_bytes", "model_bytes", "code_bytes", "unique_params",
            "virtual_layers", "steps", "train_tokens", "train_s", "tokens_per_s"}


def run(tiny_corpus, cfg_dict, out, **kw):
    cfg = config.from_dict(cfg_dict)
    return train(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], out, device="cpu", echo=False, **kw)


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


def test_reports_arrive_on_time_and_resume_continues_exactly(tiny_corpus, tiny_config_dict, tmp_path):
    cfg_dict = tiny_config_dict
    cfg_dict["train"].update(max_steps=30, report_every_s=0.05, budget_s=1000.0)
    reports = []

    def report(metrics, save_checkpoint):
        if not reports:
            save_checkpoint(tmp_path / "ckpt")
        reports.append(metrics)

    full = run(tiny_corpus, cfg_dict, tmp_path / "full", report=report)
    assert len(reports) >= 2
    assert [r["step"] for r in reports] == sorted(r["step"] for r in reports)
    assert all(r["val_bpb"] > 0 and r["train_s"] > 0 for r in reports)
    first = reports[0]
    resumed_reports = []
    resumed = run(tiny_corpus, cfg_dict, tmp_path / "resumed", report=lambda m, s: resumed_reports.append(m),
                  resume_from=tmp_path / "ckpt")
    assert resumed["steps"] == 30
    assert all(r["step"] > first["step"] for r in resumed_reports)
    # Same data position, same optimizer state, step-based schedule: the resumed run ends where the full one did.
    assert resumed["val_bpb_prequant"] == pytest.approx(full["val_bpb_prequant"], abs=1e-5)


@pytest.mark.parametrize("report_at_s, report_every_s, expected", [
    ((0.2, 0.6), 0.0, [0.2, 0.6]),  # only the listed times (a search's ASHA rungs)
    ((0.2, 0.6), 0.4, [0.2, 0.4, 0.6, 0.8]),  # both schedules; 0.4 and 0.8 are periodic, 0.6 is listed
    ((0.2, 0.4), 0.2, [0.2, 0.4, 0.6, 0.8]),  # times on both schedules report once
])
def test_reports_once_per_scheduled_time_crossed(tiny_corpus, tiny_config_dict, tmp_path, report_at_s,
                                                 report_every_s, expected):
    tiny_config_dict["train"].update(max_steps=1_000_000, budget_s=1.0, report_at_s=list(report_at_s),
                                     report_every_s=report_every_s)
    reports = []
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path, report=lambda m, save: reports.append(m["train_s"]))
    # Each report comes on the first step past its time, before the next time (steps take a few ms here).
    assert len(reports) == len(expected), reports
    for train_s, due, following in zip(reports, expected, expected[1:] + [metrics["train_s"]]):
        assert due <= train_s < following, (reports, expected)


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
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m", "trainer",
         "train", "--config", str(path), "--device", "cpu", "--data", str(tiny_corpus["data"]),
         "--tokenizer", str(tiny_corpus["tokenizer"]), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 6
    # Both ranks share one global batch: the tokens counted are the configured global batch per step.
    assert metrics["train_tokens"] == 6 * tiny_config_dict["train"]["batch_tokens"]


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
                                                                               tmp_path):
    cfg_dict = tiny_config_dict
    cfg_dict["train"].update(max_steps=30, report_every_s=0.05, budget_s=1000.0, rung_roundtrip=True)
    cfg_dict["export"] = {**cfg_dict.get("export", {}), "quant_bits": 5}
    cfg = config.from_dict(cfg_dict)
    reports, rescored = [], []

    def report(metrics, save_checkpoint):
        reports.append(metrics)
        if len(reports) <= 2:  # rescore from the rung's checkpoint: the weights the rung evaluated
            rescored.append(_rescore_checkpoint(save_checkpoint, tmp_path / f"ckpt{len(reports)}", cfg,
                                                tiny_corpus, roundtrip=True))

    with_roundtrip = run(tiny_corpus, cfg_dict, tmp_path / "on", report=report)
    assert len(reports) >= 2
    for rung, again in zip(reports, rescored):
        assert rung["val_bpb"] == pytest.approx(again, abs=1e-6)
        assert rung["val_bpb"] != rung["val_bpb_prequant"]  # int5 changes the score
    cfg_dict["train"]["rung_roundtrip"] = False
    without = run(tiny_corpus, cfg_dict, tmp_path / "off", report=lambda m, s: None)
    # The round trip is scored on a copy: training continues from the unquantized weights, step for step.
    assert with_roundtrip["val_bpb_prequant"] == pytest.approx(without["val_bpb_prequant"], abs=1e-6)


def test_should_stop_ends_the_run_at_the_next_step_without_export(tiny_corpus, tiny_config_dict, tmp_path):
    cfg_dict = tiny_config_dict
    cfg_dict["train"].update(max_steps=1000, budget_s=1000.0)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(StopRequested, match="step 3"):
        run(tiny_corpus, cfg_dict, tmp_path, should_stop=should_stop)
    assert len(calls) == 3 and not (tmp_path / "model.ptz").exists()


def test_before_training_runs_once_after_warmup_and_its_wait_is_not_training(tiny_corpus, tiny_config_dict,
                                                                            tmp_path):
    # A trial sharing its GPU waits in before_training: the wait is reported apart and never eats the budget.
    tiny_config_dict["train"].update(max_steps=1_000_000, budget_s=0.6, compile_warmup_steps=2, report_at_s=[0.2])
    events = []

    def before_training():
        events.append(("before", len(events)))
        time.sleep(0.4)

    reports = []
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path, before_training=before_training,
                  report=lambda m, save: reports.append(m))
    assert events == [("before", 0)]
    assert 0.4 <= metrics["wait_s"] < 1.0 and metrics["train_s"] < 0.6 + 0.3
    assert metrics["wall_s"] >= metrics["startup_s"] + metrics["compile_s"] + metrics["wait_s"] + metrics["train_s"]
    # Rung reports carry the time before training, so a trial ASHA stops still accounts for it.
    (rung,) = reports
    assert rung["wait_s"] == metrics["wait_s"] and rung["compile_s"] == metrics["compile_s"] > 0
    assert "waited 0.4s for the device" in (tmp_path / "train.log").read_text()


# Both ways a GPU says it is full: the caching allocator's error, and the driver's when a compiled kernel's launch
# finds no memory (the 14-layer preset in call 44's search, beside a trial in training).
OUT_OF_MEMORY = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                 RuntimeError("CUDA driver error: out of memory")]


@pytest.mark.parametrize("shares_gpu", [True, False])
@pytest.mark.parametrize("error", OUT_OF_MEMORY, ids=["allocator", "driver"])
def test_a_warmup_out_of_memory_waits_for_the_turn_and_warms_up_again(tiny_corpus, tiny_config_dict, tmp_path,
                                                                      monkeypatch, shares_gpu, error):
    # Beside the trial that holds a shared GPU a warm-up can run out of memory; with a turn to wait for, the
    # trial takes it and warms up again from the same initial weights, so it trains as an unshared run would.
    import trainer.train as train_module

    class OutOfMemoryOnce(train_module.GPT):
        calls = 0

        def forward(self, *args, **kwargs):
            type(self).calls += 1
            if type(self).calls == 2:  # inside the second warm-up step, after one optimizer step
                raise error
            return super().forward(*args, **kwargs)

    tiny_config_dict["train"].update(compile_warmup_steps=3, max_steps=6)
    reference = run(tiny_corpus, tiny_config_dict, tmp_path / "reference")
    monkeypatch.setattr(train_module, "GPT", OutOfMemoryOnce)
    turns = []
    if not shares_gpu:
        with pytest.raises(type(error)):
            run(tiny_corpus, tiny_config_dict, tmp_path / "alone")
        return
    metrics = run(tiny_corpus, tiny_config_dict, tmp_path / "shared", before_training=lambda: turns.append(1))
    assert turns == [1]  # the turn is taken once, before the second warm-up
    assert metrics["val_bpb_prequant"] == pytest.approx(reference["val_bpb_prequant"], abs=1e-6)
    assert "warming up again once it holds the device" in (tmp_path / "shared" / "train.log").read_text()


def test_gpu_runs_pin_the_cpu_thread_count_whatever_the_launcher_set():
    """Inductor's cache key holds the thread count: a Ray trial (OMP_NUM_THREADS = its CPUs) and a torchrun rerun
    of one shape must agree on it, or each compiles cold."""
    code = "import torch; from trainer.train import pin_cpu_threads; pin_cpu_threads(); print(torch.get_num_threads())"
    counts = set()
    for omp in ("1", "2", "5"):
        env = dict(os.environ, OMP_NUM_THREADS=omp)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        counts.add(int(out.stdout.strip()))
    assert counts == {min(8, os.cpu_count() or 1)}


def test_only_out_of_memory_errors_count_as_a_full_gpu():
    from trainer.train import is_out_of_memory

    assert all(is_out_of_memory(e) for e in OUT_OF_MEMORY)
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_out_of_memory(ValueError("CUDA driver error: out of memory"))


def test_rung_cooldown_scores_a_cooled_copy_and_leaves_training_alone(tiny_corpus, tiny_config_dict, tmp_path):
    cfg_dict = tiny_config_dict
    cfg_dict["train"].update(max_steps=30, report_every_s=0.05, budget_s=1000.0, rung_cooldown_fraction=0.25)
    cfg = config.from_dict(cfg_dict)
    reports, rescored = [], []

    def report(metrics, save_checkpoint):
        reports.append(metrics)
        if len(reports) <= 2:  # the rung's checkpoint holds the weights before the cooldown: training's own
            rescored.append(_rescore_checkpoint(save_checkpoint, tmp_path / f"ckpt{len(reports)}", cfg,
                                                tiny_corpus, roundtrip=False))

    cooled = run(tiny_corpus, cfg_dict, tmp_path / "on", report=report)
    assert len(reports) >= 2
    for rung, again in zip(reports, rescored):
        assert rung["val_bpb_before_cooldown"] == pytest.approx(again, abs=1e-6)
    for rung in reports:
        assert rung["cooldown_steps"] == max(1, round(0.25 * rung["step"]))
        assert rung["val_bpb"] == rung["val_bpb_prequant"]  # no round trip asked: one score
    assert any(r["val_bpb"] < r["val_bpb_before_cooldown"] for r in reports)  # decaying the LR helps at some rung
    cfg_dict["train"]["rung_cooldown_fraction"] = 0.0
    without = run(tiny_corpus, cfg_dict, tmp_path / "off", report=lambda m, s: None)
    # Model, optimizers and data position are rewound after each cooldown: training goes on step for step.
    assert cooled["steps"] == without["steps"]
    assert cooled["val_bpb_prequant"] == pytest.approx(without["val_bpb_prequant"], abs=1e-6)


def test_cooldown_scales_decay_linearly_and_the_fraction_is_validated(tiny_config_dict):
    from trainer.optim import cooldown_scales

    assert cooldown_scales(0.8, 4) == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert cooldown_scales(1.0, 1) == [1.0]
    tiny_config_dict["train"]["rung_cooldown_fraction"] = 0.6
    with pytest.raises(config.ConfigError, match="train.rung_cooldown_fraction"):
        config.from_dict(tiny_config_dict)
