"""metrics.json through trainer.metrics: round trip, the files of earlier trainers, and damaged files."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from trainer.metrics import METRICS_VERSION, MetricsError, RunMetrics, read_record
from trainer.run_config import RunConfig

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# Written before metrics_version, startup_s, wait_s, attention, flops_per_token and mfu existed.
OLDEST = RESULTS / "size_calibration_h100_2026-11-25" / "runs_180s" / "uniform_baseline_9x512_int8_seed1337" / "metrics.json"


def sample() -> RunMetrics:
    """Metrics of a run as the trainer builds them (every figure distinct, so a swapped key shows)."""
    return RunMetrics(
        val_bpb=1.25, val_loss=2.11, val_bpb_prequant=1.2, val_loss_prequant=2.03, val_tokens=1024,
        val_bytes=2481, artifact_bytes=15_900_123, model_bytes=15_850_000, code_bytes=50_123,
        payload_bytes=17_000_001, limit_bytes=16_000_000, over_limit=False, unique_params=17_000_000,
        virtual_layers=13, steps=1500, train_tokens=196_608_000, train_s=179.9, step_ms=119.9,
        tokens_per_s=1_092_874.0, peak_mem_bytes=40 * 2**30, compile_s=14.5, eval_s=6.25, export_s=9.75,
        wall_s=215.0, world_size=1, device="NVIDIA H100 80GB HBM3", config=RunConfig().to_dict(), startup_s=3.5,
        wait_s=0.0, attention="fa3", flops_per_token=123_456_789, mfu=0.41,
        upgraded_bits={"blocks.4.mlp.fc.weight": 6, "blocks.5.mlp.proj.weight": 6})


def test_metrics_round_trip_through_the_file(tmp_path):
    metrics = sample()
    path = tmp_path / "metrics.json"
    metrics.write(path)
    assert RunMetrics.read(path) == metrics
    data = json.loads(path.read_text())
    assert set(data) == {f.name for f in dataclasses.fields(RunMetrics)}  # every key, nothing else
    assert data["metrics_version"] == METRICS_VERSION == 4 and data["val_bpb"] == 1.25
    assert RunMetrics.read(path).seed == 1337
    assert not list(tmp_path.glob("*.partial"))  # written whole, then renamed


def test_a_metrics_file_of_an_earlier_trainer_still_reads():
    raw = json.loads(OLDEST.read_text())
    assert "metrics_version" not in raw and "mfu" not in raw and "startup_s" not in raw
    metrics = RunMetrics.read(OLDEST)
    assert metrics.metrics_version == 1
    assert (metrics.startup_s, metrics.wait_s, metrics.attention, metrics.flops_per_token, metrics.mfu) == (None,) * 5
    assert {k: getattr(metrics, k) for k in raw} == raw
    assert metrics.seed == raw["config"]["train"]["seed"]


def test_every_metrics_file_in_the_repository_reads():
    paths = sorted(RESULTS.glob("**/metrics.json"))
    assert OLDEST in paths and len(paths) >= 40  # the stored results of several question folders
    versions = {RunMetrics.read(p).metrics_version for p in paths}
    # The oldest results are version 1, the recipe-parity runs version 3: every version stored still reads.
    assert {1, 3} <= versions <= set(range(1, METRICS_VERSION + 1))


def _written(tmp_path, change) -> Path:
    data = sample().to_dict()
    change(data)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.pop("val_loss"), r"lacks \['val_loss'\]; the file is truncated"),
    (lambda d: d.pop("mfu"), r"lacks \['mfu'\]"),  # version 2 holds every key
    (lambda d: d.update(val_bpb="1.25"), r"val_bpb is '1.25', not float"),
    (lambda d: d.update(steps=1500.5), r"steps is 1500.5, not int"),
    (lambda d: d.update(over_limit=1), r"over_limit is 1, not bool"),
    (lambda d: d.update(metrics_version=5), r"metrics_version 5 is not one this trainer reads \(1 to 4\)"),
    (lambda d: d.pop("upgraded_bits"), r"lacks \['upgraded_bits'\]"),  # version 4 always records it
    (lambda d: d.update(upgraded_bits={"blocks.0.mlp.fc.weight": "6"}), r"upgraded_bits is .*not tensor names"),
    (lambda d: d.update(val_bpb_rung=1.0), r"unknown key\(s\) \['val_bpb_rung'\]"),
    (lambda d: d.update(config={"model": {}}), r"config has no train.seed"),
])
def test_a_damaged_or_foreign_file_is_named_with_its_problem(tmp_path, change, problem):
    path = _written(tmp_path, change)
    with pytest.raises(MetricsError, match=problem) as err:
        RunMetrics.read(path)
    assert str(err.value).startswith(str(path))


def test_a_version_1_file_still_needs_the_keys_version_1_always_had(tmp_path):
    def as_version_1(d):
        for key in ("metrics_version", "startup_s", "wait_s", "attention", "flops_per_token", "mfu"):
            d.pop(key)

    assert RunMetrics.read(_written(tmp_path, as_version_1)).mfu is None
    with pytest.raises(MetricsError, match=r"lacks \['device'\]"):
        RunMetrics.read(_written(tmp_path, lambda d: (as_version_1(d), d.pop("device"))))


def test_a_version_3_file_reads_without_the_allocation(tmp_path):
    def as_version_3(d):
        d.update(metrics_version=3)
        d.pop("upgraded_bits")

    assert RunMetrics.read(_written(tmp_path, as_version_3)).upgraded_bits is None


def test_truncated_missing_and_non_object_files_are_one_clear_error(tmp_path):
    path = tmp_path / "metrics.json"
    sample().write(path)
    path.write_text(path.read_text()[:200])  # cut off mid-file, as a full disk or a killed copy leaves it
    with pytest.raises(MetricsError, match="not readable JSON .*damaged or truncated"):
        RunMetrics.read(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MetricsError, match="damaged or truncated"):
        read_record(path)
    path.write_text("[1, 2]")
    with pytest.raises(MetricsError, match="holds a JSON list"):
        RunMetrics.read(path)
    with pytest.raises(MetricsError, match="no such file"):
        RunMetrics.read(tmp_path / "elsewhere" / "metrics.json")
    assert issubclass(MetricsError, ValueError)


def test_a_version_2_file_reads_without_the_keys_version_3_added(tmp_path):
    def as_version_2(d):
        d["metrics_version"] = 2
        for key in ("val_bpb_prequant_raw", "val_bpb_sliding", "val_loss_sliding"):
            d.pop(key)

    metrics = RunMetrics.read(_written(tmp_path, as_version_2))
    assert metrics.metrics_version == 2 and metrics.mfu == 0.41
    assert (metrics.val_bpb_prequant_raw, metrics.val_bpb_sliding, metrics.val_loss_sliding) == (None,) * 3
    with pytest.raises(MetricsError, match=r"lacks \['mfu'\]"):  # a version 2 file always had mfu
        RunMetrics.read(_written(tmp_path, lambda d: (as_version_2(d), d.pop("mfu"))))
    with pytest.raises(MetricsError, match=r"lacks \['val_bpb_sliding'\]"):  # version 3 writes every key
        RunMetrics.read(_written(tmp_path, lambda d: d.pop("val_bpb_sliding")))
    full = dataclasses.replace(sample(), val_bpb_prequant_raw=1.21, val_bpb_sliding=1.19, val_loss_sliding=2.0)
    full.write(tmp_path / "full.json")
    assert RunMetrics.read(tmp_path / "full.json") == full
