"""`trainer export`: a finished run's saved weights re-exported under other export settings, on the CPU."""
import json

import pytest

from tests.test_search_lease import holder
from trainer import artifact
from trainer import run_config as config
from trainer.cli import main
from trainer.reexport import export_name, reexport
from trainer.components import WEIGHTS_FILE
from trainer.data.shards import ShardError
from trainer.device_lease import DeviceLease
from trainer.train import train


def free(folder) -> bool:
    """Whether the CPU's lease in folder is free: taken at once (and given back)."""
    probe = DeviceLease("host/cpu", folder=folder)
    waited_s = probe.acquire()
    probe.release()
    return waited_s < 0.5


@pytest.fixture
def trained_run(tiny_corpus, tiny_config_dict, tmp_path):
    """A tiny run trained with --save-weights, every matrix and the embedding quantized at int5."""
    cfg_dict = tiny_config_dict
    cfg_dict["train"].update(max_steps=30)
    cfg_dict["export"].update(quant_bits=5, keep_float_max_numel=1024)
    run_dir = tmp_path / "run"
    metrics = train(config.from_dict(cfg_dict), tiny_corpus["data"], tiny_corpus["tokenizer"], run_dir, device="cpu",
                    echo=False, save_weights=True)
    return run_dir, metrics.to_dict()


def test_without_overrides_it_reproduces_the_trained_artifact_and_val_bpb(tiny_corpus, trained_run):
    run_dir, metrics = trained_run
    assert (run_dir / WEIGHTS_FILE).is_file()
    result = reexport(run_dir, [], tiny_corpus["data"], tiny_corpus["tokenizer"], device="cpu")
    assert result["val_bpb"] == pytest.approx(metrics["val_bpb"], abs=1e-9)
    assert result["artifact_bytes"] == metrics["artifact_bytes"]
    assert (run_dir / "exports" / "as_trained.ptz").read_bytes() == (run_dir / "model.ptz").read_bytes()
    written = json.loads((run_dir / "exports" / "as_trained.json").read_text())
    assert written["val_bpb"] == result["val_bpb"]
    assert written["roundtrip_cost_bpb"] == pytest.approx(metrics["val_bpb"] - metrics["val_bpb_prequant"])


def test_wider_exports_cost_less_in_the_round_trip_and_take_more_bytes(tiny_corpus, trained_run):
    run_dir, metrics = trained_run
    int5 = reexport(run_dir, [], tiny_corpus["data"], tiny_corpus["tokenizer"], device="cpu")
    emb16 = reexport(run_dir, ["export.embedding_bits=16"], tiny_corpus["data"], tiny_corpus["tokenizer"],
                     device="cpu")
    int8 = reexport(run_dir, ["export.quant_bits=8", "export.embedding_bits=16"], tiny_corpus["data"],
                    tiny_corpus["tokenizer"], device="cpu")
    assert int5["artifact_bytes"] < emb16["artifact_bytes"] < int8["artifact_bytes"]
    assert abs(int8["roundtrip_cost_bpb"]) < abs(int5["roundtrip_cost_bpb"])
    assert emb16["export"]["embedding_bits"] == 16 and emb16["export"]["quant_bits"] == 5
    stored_cfg, _ = artifact.load(run_dir / "exports" / "embedding_bits_16.ptz")
    assert stored_cfg.export.embedding_bits == 16


def test_the_cli_prints_the_result_and_rejects_what_the_weights_fix(tiny_corpus, trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    out = tmp_path / "elsewhere" / "int8.ptz"
    args = ["export", str(run_dir), "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"]),
            "--device", "cpu"]
    assert main(args + ["--set", "export.quant_bits=8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "val_bpb" in printed and out.is_file() and out.with_suffix(".json").is_file()
    assert "quantized tensors:" in printed and "int8" in json.loads(out.with_suffix(".json").read_text())["export_detail"]
    assert main(args + ["--set", "model.model_dim=64"]) == 2
    assert "only export.* settings can change after training" in capsys.readouterr().err
    assert main(args + ["--set", "export.quant_bits=7"]) == 2
    assert "export.quant_bits: must be 5, 6 or 8" in capsys.readouterr().err


def test_a_run_without_saved_weights_names_the_fix(tiny_corpus, tiny_config_dict, tmp_path, capsys):
    train(config.from_dict(tiny_config_dict), tiny_corpus["data"], tiny_corpus["tokenizer"], tmp_path / "plain",
          device="cpu", echo=False)
    assert not (tmp_path / "plain" / WEIGHTS_FILE).exists()
    args = ["export", str(tmp_path / "plain"), "--data", str(tiny_corpus["data"]),
            "--tokenizer", str(tiny_corpus["tokenizer"])]
    assert main(args) == 2
    assert "--save-weights" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--data", "d", "--tokenizer", "t"]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_export_names_say_which_settings_changed():
    assert export_name([]) == "as_trained"
    assert export_name(["export.quant_bits=8", "export.embedding_bits=16"]) == "quant_bits_8__embedding_bits_16"


def test_a_shared_device_export_waits_for_the_holder_then_gives_the_same_result(tiny_corpus, trained_run, tmp_path):
    run_dir, metrics = trained_run
    other = holder(tmp_path / "locks", "host/cpu", 1.5, tmp_path / "held")  # another run holds the device for 1.5 s
    lease = DeviceLease("host/cpu", folder=tmp_path / "locks")
    result = reexport(run_dir, [], tiny_corpus["data"], tiny_corpus["tokenizer"], device="cpu", lease=lease)
    other.wait(timeout=30)
    assert result["device_wait_s"] > 0.5
    assert result["val_bpb"] == pytest.approx(metrics["val_bpb"], abs=1e-9)
    assert (run_dir / "exports" / "as_trained.ptz").read_bytes() == (run_dir / "model.ptz").read_bytes()
    assert not lease.held and free(tmp_path / "locks")


def test_a_shared_device_export_hands_the_device_on_even_when_it_fails(tiny_corpus, trained_run, tmp_path):
    run_dir, _ = trained_run
    lease = DeviceLease("host/cpu", folder=tmp_path / "locks")
    with pytest.raises(ShardError, match="no files match"):  # before its turn: no val shards
        reexport(run_dir, [], tmp_path / "no_shards", tiny_corpus["tokenizer"], device="cpu", lease=lease)
    assert not lease.held and free(tmp_path / "locks")
    (run_dir / WEIGHTS_FILE).write_bytes(b"not a state_dict")  # in its turn: weights that do not load
    with pytest.raises(ValueError, match="damaged, not float weights torch can read"):
        reexport(run_dir, [], tiny_corpus["data"], tiny_corpus["tokenizer"], device="cpu", lease=lease)
    assert not lease.held and free(tmp_path / "locks")


def test_damaged_weights_are_named_with_the_fix(tiny_corpus, trained_run, capsys):
    run_dir, _ = trained_run
    for damaged in (b"not a state_dict", (run_dir / WEIGHTS_FILE).read_bytes()[:1000], b""):
        (run_dir / WEIGHTS_FILE).write_bytes(damaged)
        assert main(["export", str(run_dir), "--data", str(tiny_corpus["data"]), "--tokenizer",
                     str(tiny_corpus["tokenizer"]), "--device", "cpu"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: {run_dir / WEIGHTS_FILE}: damaged, not float weights torch can read "
            f"({'UnpicklingError' if damaged.startswith(b'not') else 'RuntimeError' if damaged else 'EOFError'}); "
            "train the run again with --save-weights"]
