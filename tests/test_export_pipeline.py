"""export_artifact end to end on a tiny CPU model: calibration, GPTQ, mixed widths, compressor, file read back."""
import dataclasses

import pytest
import torch

from tests.weights import trained_like
from trainer import artifact, compress
from trainer import run_config as config
from trainer.data.shards import TokenStream
from trainer.export_pipeline import BackgroundWrite, export_artifact, export_payload
from trainer.gptq import calibration_batches, collect_hessians
from trainer.model_config import ConfigError
from trainer.sizing import size_model
from trainer.trainer import build_model


def tiny_run(tiny_config_dict, **export):
    data = tiny_config_dict
    data["model"].update(unique_blocks=2, virtual_layers=[0, 1, 0, 1])
    data["export"].update(keep_float_max_numel=512, quant_bits=5, gptq_calibration_batches=3,
                          gptq_calibration_batch_tokens=256, **export)
    cfg = config.from_dict(data)
    return cfg, trained_like(lambda: build_model(cfg, torch.device("cpu")))


def layer_output_error(state, restored, hessians):
    """Sum over the block matrices of tr((W - Q) H (W - Q)^T): what the export costs each layer's output."""
    total = 0.0
    for name, h in hessians.items():
        diff = restored[name] - state[name]
        total += ((diff @ h) * diff).sum().item()
    return total


def test_export_artifact_with_gptq_mixed_widths_and_best_compressor(tiny_corpus, tiny_config_dict, tmp_path):
    cfg, model = tiny_run(tiny_config_dict, gptq=True, upgrade_bits=6, compressor="best", byte_shuffle=True)
    every = {s.name: 6 for s in size_model.upgrade_candidates(cfg)}
    low, high = (size_model.predict(cfg, bits=bits) for bits in ({}, every))
    middle = (low.predicted_artifact_bytes + low.safety_margin_bytes + high.predicted_artifact_bytes
              + high.safety_margin_bytes) // 2
    cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, limit_bytes=middle))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stream = TokenStream(tiny_corpus["data"], tiny_corpus["vocab_size"])
    payload, info = export_artifact(model, cfg, stream, tmp_path / "model.ptz")

    assert info.artifact.model_bytes == (tmp_path / "model.ptz").stat().st_size
    assert info.artifact.payload_bytes == len(payload) == artifact.payload_bytes(cfg)
    assert artifact.holds(tmp_path / "model.ptz", payload)
    assert info.calibration_tokens == 3 * 256 and stream.position == 3 * 256
    assert 0 < sum(b == 6 for b in info.bits.values()) < len(every)  # some matrices upgraded, not all
    assert size_model.predict(cfg, bits={n: b for n, b in info.bits.items() if b == 6}).fits
    assert "quantized tensors:" in info.describe() and f"{info.artifact.artifact_bytes:,}" in info.describe()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the model is left as it was
    loaded_cfg, restored = artifact.load(tmp_path / "model.ptz")
    assert loaded_cfg.export == cfg.export
    model.load_state_dict(restored)  # strict: every tensor is there

    # GPTQ's point, end to end: the layers' outputs on the calibration data move less than with round-to-nearest.
    fresh = TokenStream(tiny_corpus["data"], tiny_corpus["vocab_size"])  # the tokens the export calibrated on
    batches = calibration_batches(fresh, 3, 256, cfg.train.seq_len)
    hessians = collect_hessians(_with_state(cfg, state), batches)
    rtn_cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, gptq=False))
    rtn = artifact.unpack(artifact.pack(state, rtn_cfg, hessians))[1]
    assert layer_output_error(state, restored, hessians) < 0.8 * layer_output_error(state, rtn, hessians)


def _with_state(cfg, state):
    model = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(state)
    return model


def test_generated_calibration_needs_no_training_tokens(tiny_config_dict, tmp_path):
    cfg, model = tiny_run(tiny_config_dict, gptq=True, gptq_calibration="generated")
    payload, info = export_artifact(model, cfg, None, tmp_path / "model.ptz")
    assert info.calibration_tokens == 3 * 256 and info.artifact.compressor == "zstd"
    assert artifact.header_of(payload)["config"]["export"]["gptq_calibration"] == "generated"


def test_export_without_gptq_is_the_plain_pack(tiny_config_dict, tmp_path):
    cfg, model = tiny_run(tiny_config_dict)
    payload, info = export_payload(model, cfg, None)
    assert payload == artifact.pack(model.state_dict(), cfg) and info.artifact is None and info.calibration_tokens == 0
    assert "payload not written" in info.describe()


def test_background_write_gives_the_files_sizes_and_refuses_a_file_that_is_not_the_payload(tiny_config_dict, tmp_path):
    cfg, model = tiny_run(tiny_config_dict)
    payload, _ = export_payload(model, cfg, None)
    info, write_s = BackgroundWrite(payload, cfg, tmp_path / "model.ptz").result()
    blob = (tmp_path / "model.ptz").read_bytes()
    assert info.model_bytes == len(blob) and info.payload_bytes == len(payload) and write_s >= 0
    assert artifact.holds(tmp_path / "model.ptz", payload)
    # A blob made from other weights (as a stale or mixed-up encoding would be) is caught, not reported as this one.
    other = artifact.pack({k: v + 0.01 for k, v in model.state_dict().items()}, cfg)
    stale = BackgroundWrite(payload, cfg, tmp_path / "stale.ptz", artifact.encode(other, cfg.export))
    with pytest.raises(artifact.ArtifactError, match="stale.ptz does not decompress to the payload.*export again"):
        stale.result()


def test_gptq_needs_hessians_and_training_calibration_needs_a_stream(tiny_config_dict, tmp_path):
    cfg, model = tiny_run(tiny_config_dict, gptq=True)
    with pytest.raises(ConfigError, match="needs a stream of training tokens"):
        export_artifact(model, cfg, None, tmp_path / "model.ptz")
    with pytest.raises(artifact.ArtifactError, match="export.gptq needs the Hessians"):
        artifact.pack(model.state_dict(), cfg)
    assert not (tmp_path / "model.ptz").exists()


def test_trainer_export_runs_gptq_on_a_finished_runs_weights(tiny_corpus, tiny_config_dict, tmp_path, capsys):
    from trainer.cli import main
    from trainer.train import train

    tiny_config_dict["train"].update(max_steps=20)
    tiny_config_dict["export"].update(quant_bits=5, keep_float_max_numel=1024)
    run_dir = tmp_path / "run"
    train(config.from_dict(tiny_config_dict), tiny_corpus["data"], tiny_corpus["tokenizer"], run_dir, device="cpu",
          echo=False, save_weights=True)
    out = tmp_path / "gptq.ptz"
    assert main(["export", str(run_dir), "--set", "export.gptq=true", "--set", "export.gptq_calibration_batches=2",
                 "--set", "export.compressor=lzma", "--data", str(tiny_corpus["data"]),
                 "--tokenizer", str(tiny_corpus["tokenizer"]), "--device", "cpu", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    cfg, _ = artifact.load(out)
    assert cfg.export.gptq and cfg.export.compressor == "lzma" and compress.codec_of(out.read_bytes()) == "lzma"
