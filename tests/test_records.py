"""Submission folders from run directories holding real (small) metrics, artifact and log files."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

from search.rerun.records import RecordError, SubmissionInfo, load_run, write_record
from search.rerun.stats import record_criterion
from trainer.metrics import RunMetrics

CONFIG = {"model": {"n_layers": 9, "d_model": 512}, "train": {"budget_s": 600.0}, "export": {"quant_bits": 8}}
CODE_BYTES = 48_000


def make_run(root: Path, seed: int, val_loss: float, model_bytes: int, config: dict | None = None) -> Path:
    run = root / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "model.ptz").write_bytes(os.urandom(model_bytes))
    (run / "train.log").write_text(f"seed {seed}\nstep 100 loss 3.1\nval_loss {val_loss:.4f}\n")
    cfg = json.loads(json.dumps(config or CONFIG))
    cfg["train"]["seed"] = seed
    metrics = RunMetrics(
        val_bpb=val_loss / 2.0, val_loss=val_loss, val_bpb_prequant=val_loss / 2.0, val_loss_prequant=val_loss,
        val_tokens=1000, val_bytes=2000, artifact_bytes=model_bytes + CODE_BYTES, model_bytes=model_bytes,
        code_bytes=CODE_BYTES, payload_bytes=2 * model_bytes, limit_bytes=16_000_000, over_limit=False,
        unique_params=5000, virtual_layers=9, steps=100, train_tokens=51_200, train_s=60.0, step_ms=600.0,
        tokens_per_s=853.3, peak_mem_bytes=0, compile_s=1.0, eval_s=2.0, export_s=3.0, wall_s=70.0, world_size=1,
        device="cpu", config=cfg)
    metrics.write(run / "metrics.json")
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [make_run(tmp_path / "runs", seed, loss, size)
            for seed, loss, size in [(1337, 2.880, 3000), (42, 2.882, 3100), (2025, 2.879, 2900)]]


INFO = SubmissionInfo(name="Recurrent 3x3", author="Ada", github_id="ada", date="2026-05-01")


def test_writes_the_records_folder(runs: list[Path], tmp_path: Path):
    out = write_record(runs, tmp_path / "record", INFO, artifact_seed=42)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "model.ptz", "submission.json", "train_seed1337.log", "train_seed2025.log", "train_seed42.log"]
    assert (out / "model.ptz").read_bytes() == (runs[1] / "model.ptz").read_bytes()
    assert (out / "train_seed2025.log").read_text() == (runs[2] / "train.log").read_text()

    data = json.loads((out / "submission.json").read_text())
    losses = [2.880, 2.882, 2.879]
    assert data["seeds"] == [1337, 42, 2025]
    assert data["val_loss"] == pytest.approx(statistics.fmean(losses))
    assert data["val_loss_std"] == pytest.approx(statistics.stdev(losses))
    assert data["val_bpb"] == pytest.approx(statistics.fmean(losses) / 2)
    assert data["bytes_total"] == 3100 + CODE_BYTES  # the largest seed's artifact
    assert data["artifact_file_bytes"] == 3100 and data["artifact_seed"] == 42
    assert data["under_limit"] is True
    assert (data["name"], data["author"], data["github_id"], data["date"]) == ("Recurrent 3x3", "Ada", "ada", "2026-05-01")
    assert data["seed_results"]["2025"]["artifact_bytes"] == 2900 + CODE_BYTES
    assert data["significance"] is None

    readme = (out / "README.md").read_text()
    assert "# Recurrent 3x3" in readme and "| 42 | 1.4410 | 2.8820 | 51,100 | train_seed42.log |" in readme
    assert "No baseline was given" in readme


def test_significance_against_a_baseline(runs: list[Path], tmp_path: Path):
    baseline = [2.900, 2.901, 2.899]
    out = write_record(runs, tmp_path / "record", INFO, baseline_val_loss=baseline)
    sig = json.loads((out / "submission.json").read_text())["significance"]
    expected = record_criterion([2.880, 2.882, 2.879], baseline)
    assert sig["p_value"] == pytest.approx(expected.welch.p_value)
    assert sig["min_gain_nats"] == 0.005 and sig["meets_criterion"] == expected.passes
    assert sig["mean_gain_nats"] == pytest.approx(statistics.fmean(baseline) - statistics.fmean([2.880, 2.882, 2.879]))
    assert "Welch t=" in (out / "README.md").read_text()


def test_mismatched_artifact_size_is_caught(runs: list[Path]):
    (runs[0] / "model.ptz").write_bytes(b"x" * 10)
    with pytest.raises(RecordError, match="mixes files of different runs"):
        load_run(runs[0])


def test_the_artifact_comes_from_the_first_seed_that_still_has_one(runs: list[Path], tmp_path: Path):
    # Runs carried between machines without their model.ptz (calls 49-50) still make a folder from another seed.
    (runs[0] / "model.ptz").unlink()
    out = write_record(runs, tmp_path / "record", INFO)
    data = json.loads((out / "submission.json").read_text())
    assert data["artifact_seed"] == load_run(runs[1]).seed
    assert (out / "model.ptz").read_bytes() == (runs[1] / "model.ptz").read_bytes()
    assert sorted(p.name for p in out.glob("train_seed*.log")) == [  # every seed's log, the artifact-less one too
        "train_seed1337.log", "train_seed2025.log", "train_seed42.log"]
    with pytest.raises(RecordError, match="its run folder has no model.ptz; pick one of"):
        write_record(runs, tmp_path / "again", INFO, artifact_seed=load_run(runs[0]).seed)
    for run in runs[1:]:
        (run / "model.ptz").unlink()
    with pytest.raises(RecordError, match="no run has its model.ptz"):
        write_record(runs, tmp_path / "none", INFO)
    assert not (tmp_path / "again").exists() and not (tmp_path / "none").exists()


def test_missing_files_and_metrics_are_named(tmp_path: Path):
    run = make_run(tmp_path, 7, 2.9, 100)
    (run / "train.log").unlink()
    with pytest.raises(RecordError, match="train.log"):
        load_run(run)
    run2 = make_run(tmp_path / "b", 8, 2.9, 100)
    metrics = json.loads((run2 / "metrics.json").read_text())
    del metrics["val_loss"]
    (run2 / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(RecordError, match="val_loss"):
        load_run(run2)


def test_runs_must_be_seeds_of_one_config(tmp_path: Path):
    other = {**CONFIG, "model": {"n_layers": 12, "d_model": 512}}
    a = make_run(tmp_path, 1, 2.9, 100)
    b = make_run(tmp_path, 2, 2.9, 100, config=other)
    with pytest.raises(RecordError, match="another config"):
        write_record([a, b], tmp_path / "record", INFO)
    c = make_run(tmp_path / "again", 1, 2.9, 100)
    with pytest.raises(RecordError, match="repeat"):
        write_record([a, c], tmp_path / "record", INFO)


def test_a_run_recorded_before_a_setting_existed_is_a_seed_of_the_same_config(tmp_path: Path):
    """Calls 56-58: seeds kept from an older trainer lack export.embedding_bits, which new seeds record at its
    default; they are one config. A real difference in that setting still makes another config."""
    from trainer.run_config import RunConfig

    new = RunConfig().to_dict()
    old = json.loads(json.dumps(new))
    del old["export"]["embedding_bits"]
    a = make_run(tmp_path / "a", 1, 2.9, 100, config=old)
    b = make_run(tmp_path / "b", 2, 2.9, 100, config=new)
    write_record([a, b], tmp_path / "record", INFO)
    assert json.loads((tmp_path / "record" / "submission.json").read_text())["seeds"] == [1, 2]
    wider = json.loads(json.dumps(new))
    wider["export"]["embedding_bits"] = 16
    c = make_run(tmp_path / "c", 3, 2.9, 100, config=wider)
    with pytest.raises(RecordError, match="another config"):
        write_record([a, c], tmp_path / "record2", INFO)


def test_refuses_a_non_empty_folder_and_an_unknown_artifact_seed(runs: list[Path], tmp_path: Path):
    with pytest.raises(RecordError, match="not among"):
        write_record(runs, tmp_path / "record", INFO, artifact_seed=5)
    out = tmp_path / "record"
    out.mkdir(exist_ok=True)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RecordError, match="not empty"):
        write_record(runs, out, INFO)
    assert (out / "notes.txt").read_text() == "keep me"
