"""CLI: help on every command, check's exit status, show and sample output."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spaces.cli import main
from spaces.space import load_space
from test_spaces_space import SMALL  # tests/ is on sys.path (rootdir conftest)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["show", "check", "sample", "from-influence", "synth", "calibrate", "accuracy"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"python -m spaces {command}" in capsys.readouterr().out


def test_check_exit_status_via_module(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(SMALL))
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({**SMALL, "quant_bits": []}))
    ok = subprocess.run([sys.executable, "-m", "spaces", "check", str(good)], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "spaces", "check", str(broken)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and "quant_bits" in bad.stderr and "fix:" in bad.stderr


def test_show_reports_size_fit_count_and_range(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    space = load_space(path)
    predictions = [space.predict(cfg) for _, cfg in space.configs()]
    sizes = [p.predicted_artifact_bytes for p in predictions]
    assert f"size: {space.size():,} configs; {sum(p.fits for p in predictions):,} predicted to fit" in out
    assert f"{min(sizes):,} .. {max(sizes):,}" in out


def test_sample_prints_n_configs_with_bytes(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    assert main(["sample", str(path), "-n", "4", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert all(re.match(r"\s*[\d,]+ bytes \(headroom \+[\d,]+\)\s+blocks=\d+ order=\[", line) for line in lines)


def test_show_predicts_each_distinct_artifact_once_and_matches_direct_predictions(tmp_path):
    from spaces.cli import _distinct_artifacts, _predictions

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "knobs": {"train.matrix_lr": [0.02, 0.04], "model.xsa_last": [0, 1]}}))
    space = load_space(path)
    predictions = [space.predict(cfg) for _, cfg in space.configs()]
    sizes, fitting = [p.predicted_artifact_bytes for p in predictions], sum(p.fits for p in predictions)
    artifacts, size = _distinct_artifacts(space)
    assert size == space.size() == len(sizes) == sum(points for _, points in artifacts)
    assert len(artifacts) == size // 2  # the train knob's two values build one artifact; the model knob's two do not
    results = list(_predictions(space, artifacts, workers=3))
    assert sum(fits * points for (fits, _), (_, points) in zip(results, artifacts)) == fitting
    assert (min(b for _, b in results), max(b for _, b in results)) == (min(sizes), max(sizes))
    assert len(set(sizes)) > 1
