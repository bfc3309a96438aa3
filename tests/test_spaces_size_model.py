"""Size model: exact counts, calibrated prediction against real artifacts, calibration CLI."""
import json
from pathlib import Path

import pytest

from spaces import calibration, size_model
from spaces.cli import main
from spaces.synthetic import write_run
from trainer import artifact
from trainer.config import from_dict, load
from trainer.schedule import unique_params

PRESETS = sorted(Path(__file__).resolve().parents[1].joinpath("spaces", "presets").glob("*.yaml"))


def tiny(dim=64, blocks=2, bits=6, order=(), untie="none", depth="none", vocab=64):
    return from_dict({
        "model": {"vocab_size": vocab, "model_dim": dim, "num_heads": 2, "num_kv_heads": 1, "unique_blocks": blocks,
                  "virtual_layers": list(order), "untie_mlp": untie, "depth_signal": depth},
        "export": {"quant_bits": bits, "keep_float_max_numel": 1024},
    })


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_feature_counts_add_up_to_the_exact_payload(path):
    cfg = load(path)
    f = size_model.features(cfg)
    codes = f["codes_int5"] + f["codes_int6"] + f["codes_int8"]
    assert codes + 2 * f["scales_fp16"] + 2 * f["floats_fp16"] + f["header_bytes"] == artifact.payload_bytes(cfg)
    assert f[f"codes_int{cfg.export.quant_bits}"] == codes > 0
    assert f["header_bytes"] == len(artifact.MAGIC) + 4 + len(artifact.header_bytes(cfg))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_is_predicted_to_fit(path):
    cfg = load(path)
    p = size_model.check_fits(cfg)
    assert p.unique_params == unique_params(cfg.model)
    assert p.payload_bytes == artifact.payload_bytes(cfg)
    assert p.predicted_artifact_bytes == p.predicted_model_bytes + p.code_bytes
    assert p.margin_bytes == p.limit_bytes - p.predicted_artifact_bytes - p.safety_margin_bytes >= 0
    assert p.predicted_model_bytes <= size_model.zstd_bound_bytes(p.payload_bytes)


def test_oversized_config_is_rejected_with_sizes_and_fix():
    cfg = from_dict({"model": {"model_dim": 1024, "num_heads": 16, "num_kv_heads": 8, "unique_blocks": 11},
                     "export": {"quant_bits": 8}})
    p = size_model.predict(cfg)
    assert not p.fits and p.margin_bytes < 0
    with pytest.raises(size_model.SizeLimitError) as err:
        size_model.check_fits(cfg)
    message = str(err.value)
    assert f"{p.predicted_artifact_bytes:,}" in message and f"{p.safety_margin_bytes:,}" in message
    assert "16,000,000" in message and "fix:" in message


def test_fewer_bits_predict_fewer_bytes():
    sizes = [size_model.predict(tiny(dim=256, blocks=3, bits=b)).predicted_model_bytes for b in (5, 6, 8)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_shipped_calibration_covers_a_real_artifact(tmp_path):
    """A mid-size artifact measured for real stays under predicted + safety margin, and near the prediction."""
    cfg = from_dict({"model": {"model_dim": 256, "num_heads": 4, "num_kv_heads": 2, "unique_blocks": 3,
                               "virtual_layers": [0, 1, 2, 1, 2]}, "export": {"quant_bits": 6}})
    metrics = write_run(cfg, tmp_path / "run", "gaussian", seed=7)
    p = size_model.predict(cfg)
    assert metrics["model_bytes"] <= p.predicted_model_bytes + p.safety_margin_bytes
    assert abs(p.predicted_model_bytes - metrics["model_bytes"]) / metrics["model_bytes"] < 0.15


SHAPES = [dict(dim=64, blocks=2), dict(dim=96, blocks=3, order=(0, 1, 2, 1, 2), untie="full"),
          dict(dim=128, blocks=2, depth="learned", order=(0, 1, 0, 1)), dict(dim=64, blocks=4),
          dict(dim=128, blocks=1, order=(0, 0, 0)), dict(dim=96, blocks=2, depth="sinusoidal")]


def _tiny_runs(root: Path, shapes=SHAPES[:3], bit_widths=(5, 6, 8)) -> list[Path]:
    dirs = []
    for i, shape in enumerate(shapes):
        for bits in bit_widths:
            d = root / f"run{i}-int{bits}"
            write_run(tiny(bits=bits, **shape), d, "laplace", seed=i * 10 + bits, code_bytes=1000)
            dirs.append(d)
    return dirs


def test_calibrate_cli_fits_and_reports(tmp_path, capsys):
    dirs = _tiny_runs(tmp_path)
    out = tmp_path / "cal.json"
    assert main(["calibrate", *map(str, dirs), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    prov = data["provenance"]
    assert prov["provisional"] is True and prov["fit"]["runs"] == len(dirs)
    assert data["safety_margin_fraction"] >= calibration.MIN_MARGIN_FRACTION
    assert data["safety_margin_fraction"] >= calibration.SAFETY_FACTOR * prov["fit"]["worst_underprediction_loo_pct"] / 100 - 1e-4
    cal = size_model.load_calibration(out)
    for d in dirs:  # the fit reproduces its own runs to within its reported worst error
        run = calibration.read_run(d)
        predicted = size_model.predict_model_bytes(size_model.features(run.cfg), cal)
        assert abs(predicted - run.model_bytes) / run.model_bytes <= prov["fit"]["max_abs_error_pct"] / 100 + 1e-5  # pct is rounded to 3 decimals
    capsys.readouterr()
    assert main(["accuracy", *map(str, dirs), "--calibration", str(out)]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "quant_bits" not in line]
    assert table.count("| run | quant_bits") == 1 and len(rows) == len(dirs)
    assert all(any(row.startswith(f"| {d.name} |") for row in rows) for d in dirs)


def test_calibrate_carries_unfitted_coefficients_from_prior(tmp_path):
    runs = [calibration.read_run(d) for d in _tiny_runs(tmp_path, shapes=SHAPES, bit_widths=(6,))]
    with pytest.raises(Exception, match="codes_int5"):
        calibration.fit(runs)
    prior = size_model.load_calibration()
    cal = calibration.fit(runs, prior=prior)
    assert set(cal.provenance["carried_over_from_prior"]) >= {"codes_int5", "codes_int8"}
    assert cal.coefficients["codes_int8"] == prior.coefficients["codes_int8"]
    assert cal.safety_margin_fraction >= prior.safety_margin_fraction


def test_read_run_rejects_inconsistent_metrics(tmp_path):
    d = _tiny_runs(tmp_path)[0]
    metrics = json.loads((d / "metrics.json").read_text())
    metrics["model_bytes"] += 1
    (d / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(Exception, match="model.ptz is"):
        calibration.read_run(d)
