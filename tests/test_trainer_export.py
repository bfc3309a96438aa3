"""The Trainer's export with the export section's full recipe: GPTQ calibrated on the training shards from their
start, mixed widths, brotli with byte shuffle, checked before training; and a rung's round trip under GPTQ."""
from __future__ import annotations

import pytest
import torch

from search.tune.rungs import RungPlan, TrialHooks
from tests.trainer_runs import run
from trainer import artifact, compress
from trainer import run_config as config
from trainer.components import WEIGHTS_FILE
from trainer.data.shards import TokenStream
from trainer.export_pipeline import export_payload, tensor_bits
from trainer.model_config import ConfigError
from trainer.trainer import Trainer, build_model

RECORD_EXPORT = dict(quant_bits=5, upgrade_bits=6, upgrade=3, embedding_bits=8, gptq=True, gptq_calibration_batches=2,
                     gptq_calibration_batch_tokens=128, compressor="brotli", byte_shuffle=True,
                     keep_float_max_numel=512)


@pytest.mark.skipif("brotli" not in compress.available(), reason="brotli is not installed")
def test_the_artifact_is_gptq_of_the_final_weights_calibrated_from_the_first_training_tokens(
        tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(max_steps=6, average="ema", ema_decay=0.5)
    tiny_config_dict["export"].update(RECORD_EXPORT)
    trainer, metrics, _ = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    blob = (tmp_path / "model.ptz").read_bytes()
    assert compress.codec_of(blob) == "brotli" and metrics.model_bytes == len(blob)
    # Recompute the payload from the saved (averaged) weights and a fresh stream: every rank gets these bytes.
    cfg = trainer.cfg
    model = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(torch.load(tmp_path / WEIGHTS_FILE, weights_only=True))
    payload, info = export_payload(model, cfg, TokenStream(tiny_corpus["data"], 320))
    assert artifact.holds(tmp_path / "model.ptz", payload)
    assert sorted(set(info.bits.values())) == [5, 6, 8] and sum(b == 6 for b in info.bits.values()) == 3
    assert info.calibration_tokens == 2 * 128
    # A stream that has moved on (as training's has) calibrates on other tokens: another payload.
    moved = TokenStream(tiny_corpus["data"], 320)
    moved.take(5000)
    assert export_payload(model, cfg, moved)[0] != payload
    log = (tmp_path / "train.log").read_text()
    assert "export: artifact" in log and "calibration 256 tokens" in log and "3 at int6" in log


def test_a_measured_fill_writes_the_blob_it_measured(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(max_steps=4)
    tiny_config_dict["export"].update(RECORD_EXPORT, compressor="zstd", upgrade_fit="measured")
    trainer, metrics, _ = run(tiny_corpus, tiny_config_dict, tmp_path, save_weights=True)
    model = build_model(trainer.cfg, torch.device("cpu"))
    model.load_state_dict(torch.load(tmp_path / WEIGHTS_FILE, weights_only=True))
    payload, info = export_payload(model, trainer.cfg, TokenStream(tiny_corpus["data"], 320))
    # the trainer wrote the fill's own file bytes: the same ones a fresh export of the same weights measures
    assert (tmp_path / "model.ptz").read_bytes() == info.encoded and artifact.holds(tmp_path / "model.ptz", payload)
    assert metrics.model_bytes == len(info.encoded) and not metrics.over_limit
    # metrics.json records the allocation the file holds: its int6 tensors, the ones off the config's int5
    in_file = tensor_bits(artifact.payload_of(tmp_path / "model.ptz"))
    assert metrics.upgraded_bits == {name: 6 for name, b in in_file.items() if b == 6} and len(metrics.upgraded_bits) == 3
    log = (tmp_path / "train.log").read_text()
    assert "upgrades by measured bytes: 3 -> " in log and "kept 3" in log and "3 at int6" in log


def test_a_missing_compressor_fails_before_training(tiny_corpus, tiny_config_dict, tmp_path, monkeypatch):
    monkeypatch.setattr(compress, "available", lambda: ("zstd", "lzma"))  # a machine without brotli
    tiny_config_dict["export"].update(compressor="brotli")
    cfg = config.from_dict(tiny_config_dict)
    with pytest.raises(ConfigError, match="export.compressor: brotli is not installed here; pip install brotli"):
        Trainer(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], tmp_path, device="cpu", echo=False)
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 1 and "] config " in lines[0]  # nothing after the config line: no model, no training


def test_a_rung_round_trip_under_gptq_rounds_without_it(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(max_steps=6, budget_s=1000.0)
    tiny_config_dict["export"].update(RECORD_EXPORT, compressor="zstd")
    reports = []
    hooks = TrialHooks(RungPlan(every_s=1e-4, roundtrip=True), lambda m, s: reports.append(m))
    trainer, metrics, probe = run(tiny_corpus, tiny_config_dict, tmp_path, hooks=hooks)
    assert reports and all(r["val_bpb"] != r["val_bpb_prequant"] for r in reports)
    # The last rung's weights, rounded as the rung did (nearest, same widths), score what it reported.
    last = reports[-1]
    cfg = config.from_dict({**tiny_config_dict, "export": {**tiny_config_dict["export"], "gptq": False}})
    model = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(artifact.unpack(artifact.pack(probe.weights[last["step"]], cfg))[1])
    trainer.model.load_state_dict(model.state_dict())
    assert trainer.evaluate().val_bpb == last["val_bpb"]
