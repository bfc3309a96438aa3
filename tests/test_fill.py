"""export.upgrade_fit=measured: the next prefix to compress (pure), and the fill on a tiny model's real bytes."""
import dataclasses

import pytest
import torch

from tests.weights import trained_like
from trainer import artifact
from trainer import run_config as config
from trainer.bit_allocation import rank
from trainer.export_pipeline import export_artifact
from trainer.fill import MAX_ENCODES, fill, next_count
from trainer.model_config import ConfigError
from trainer.sizing import size_model
from trainer.trainer import build_model

PREDICTED = [1000, 1100, 1200, 1300, 1400, 1500]


def test_one_measured_point_scales_the_prediction_through_the_origin():
    # measured 900 for predicted 1000: a ratio of 0.9; 0.9 * 1300 = 1170 <= 1200 - 20, 0.9 * 1400 = 1260 is not
    assert next_count(PREDICTED, {0: 900}, budget_bytes=1200, aim_bytes=20) == 3
    # the aim only breaks the tie: nothing fits budget - aim beyond n = 0, n = 1 fits the budget itself
    assert next_count(PREDICTED, {0: 900}, budget_bytes=995, aim_bytes=20) == 1


def test_two_points_give_a_secant_and_the_answer_stays_between_fit_and_over():
    # 0 -> 900 fits, 4 -> 1300 is over 1200: the secant says measured = 900 + (p - 1000); 1300 - 1000 + 900 = 1200
    assert next_count(PREDICTED, {0: 900, 4: 1300}, budget_bytes=1200, aim_bytes=0) == 3
    assert next_count(PREDICTED, {0: 900, 4: 1300}, budget_bytes=1200, aim_bytes=50) == 2
    # nothing left between the largest fit and the smallest over
    assert next_count(PREDICTED, {2: 1100, 3: 1250}, budget_bytes=1200, aim_bytes=0) is None
    # every prefix up to the last fits: nothing larger to try
    assert next_count(PREDICTED, {5: 1150}, budget_bytes=1200, aim_bytes=0) is None


def test_when_nothing_fits_the_smallest_artifact_is_tried():
    assert next_count(PREDICTED, {3: 1500}, budget_bytes=1000, aim_bytes=0) == 0
    assert next_count(PREDICTED, {0: 1500}, budget_bytes=1000, aim_bytes=0) is None


def tiny(tiny_config_dict, **export):
    data = tiny_config_dict
    data["model"].update(unique_blocks=2, virtual_layers=[0, 1, 0, 1])
    data["export"].update(keep_float_max_numel=512, quant_bits=5, upgrade_bits=6, **export)
    cfg = config.from_dict(data)
    return cfg, trained_like(lambda: build_model(cfg, torch.device("cpu")))


def measured_model_bytes(state, cfg, n):
    names = rank(state, cfg)[:n]
    return len(artifact.encode(artifact.pack(state, cfg, bits=dict.fromkeys(names, 6)), cfg.export))


def with_limit(cfg, limit_bytes):
    return dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, limit_bytes=limit_bytes))


def prefix_sizes(state, cfg):
    """Measured model bytes of every prefix of the ranking (the limit is in the header: measure under cfg's)."""
    return [measured_model_bytes(state, cfg, n) for n in range(len(size_model.upgrade_candidates(cfg)) + 1)]


def test_fill_keeps_the_largest_prefix_whose_compressed_artifact_fits(tiny_config_dict):
    cfg, model = tiny(tiny_config_dict, upgrade_fit="measured")
    state, code = model.state_dict(), artifact.code_bytes()
    first = prefix_sizes(state, with_limit(cfg, 99_999))
    assert first == sorted(first) and first[0] < first[-1]
    cap = len(first) - 1
    for target in (1, cap // 2, cap - 1):
        cfg_n = with_limit(cfg, code + (first[target] + first[target + 1]) // 2)  # target fits, one more does not
        sizes = prefix_sizes(state, cfg_n)
        best = max(n for n, size in enumerate(sizes) if size + code <= cfg_n.export.limit_bytes)
        assert best == target
        filled = fill(state, cfg_n, None)
        assert filled.upgraded == best, filled.describe()
        assert len(filled.blob) == sizes[best] and artifact.encode(filled.payload, cfg_n.export) == filled.blob
        assert 1 <= len(filled.tried) <= MAX_ENCODES and all(sizes[n] == size for n, size in filled.tried)
        assert sum(e.get("bits") == 6 for e in artifact.header_of(filled.payload)["tensors"]) == best
        # random weights compress worse than trained ones: the prediction starts too many upgrades, the bytes cut it
        assert filled.tried[0][0] > best


def test_fill_with_no_fit_keeps_the_smallest_artifact(tiny_config_dict):
    cfg, model = tiny(tiny_config_dict, upgrade_fit="measured")
    state = model.state_dict()
    cfg = with_limit(cfg, artifact.code_bytes() + measured_model_bytes(state, cfg, 0) - 1)
    filled = fill(state, cfg, None)
    assert filled.upgraded == 0 and (0, len(filled.blob)) in filled.tried
    assert "(over)" in filled.describe()


def test_export_artifact_writes_the_measured_fill(tiny_config_dict, tmp_path):
    cfg, model = tiny(tiny_config_dict, upgrade_fit="measured")
    state = model.state_dict()
    cap = len(size_model.upgrade_candidates(cfg))
    cfg = with_limit(cfg, artifact.code_bytes() + prefix_sizes(state, with_limit(cfg, 99_999))[cap] + 50)
    payload, info = export_artifact(model, cfg, None, tmp_path / "model.ptz")
    assert info.artifact.artifact_bytes <= cfg.export.limit_bytes and sum(b == 6 for b in info.bits.values()) == cap
    assert (tmp_path / "model.ptz").read_bytes() == info.encoded and artifact.holds(tmp_path / "model.ptz", payload)
    assert f"kept {cap}" in info.describe()
    loaded_cfg, _ = artifact.load(tmp_path / "model.ptz")
    assert loaded_cfg.export.upgrade_fit == "measured"


def test_upgrade_fit_is_checked_at_the_edge(tiny_config_dict):
    with pytest.raises(ConfigError, match="export.upgrade_fit: must be one of"):
        tiny(tiny_config_dict, upgrade_fit="guess")
