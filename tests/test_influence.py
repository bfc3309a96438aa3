"""Block Influence (`trainer influence`): per virtual layer, 1 - cos(stream in, stream out), on a tiny CPU run."""
import csv
import json
import shutil

import pytest
import torch

from trainer import run_config as config
from trainer.cli import main
from trainer.components import WEIGHTS_FILE
from trainer.data.shards import load_val_tokens
from trainer.influence import influence_report, layer_influence, load_run_model
from trainer.model import GPT, rms_norm, virtual_layer
from trainer.train import train

ORDER = [0, 1, 1, 2]  # block 1 runs twice


@pytest.fixture(scope="module")
def trained_run(tiny_corpus, tmp_path_factory):
    """A tiny run over ORDER, trained 20 steps with --save-weights; plain layers (no skips) to run by hand."""
    from tests.conftest import TINY_MODEL, TINY_TRAIN

    model = dict(TINY_MODEL, unique_blocks=3, virtual_layers=ORDER, unet_skips=False)
    cfg = config.from_dict({"model": model, "train": dict(TINY_TRAIN, max_steps=20), "export": {}})
    run_dir = tmp_path_factory.mktemp("influence") / "run"
    train(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], run_dir, device="cpu", echo=False, save_weights=True)
    return run_dir, cfg


def by_hand(model: GPT, ids: torch.Tensor) -> list[float]:
    """Each layer run by hand on the stream before it; BI from the dot product in float64."""
    x0 = x = model.embed(ids)
    bis = []
    for step in model.steps:
        attn = model.attns[str(step.block)] if step.attention else None
        y = virtual_layer(x, x0, None, None, None, None, None, attn, model.mlps[step.mlp], model.layers[step.position],
                          None, step.xsa, torch.float32)
        a, b = x.double(), y.double()
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        bis.append(float((1 - cos).mean()))
        x = y
    return bis


def test_the_report_equals_the_layers_run_by_hand(tiny_corpus, trained_run, tmp_path):
    run_dir, cfg = trained_run
    result = influence_report(run_dir, tiny_corpus["data"], tiny_corpus["tokenizer"], tokens=256, out_dir=tmp_path,
                              device="cpu")
    assert result["weights"] == WEIGHTS_FILE and result["tokens"] == 256 and result["seq_len"] == 32
    model, _, _ = load_run_model(run_dir, torch.device("cpu"))
    ids = load_val_tokens(tiny_corpus["data"], cfg.model.vocab_size, 256).view(-1, 32)
    with torch.no_grad():
        expected = by_hand(model, ids)
    layers = result["layers"]
    assert [r["bi"] for r in layers] == pytest.approx(expected, rel=1e-5)
    assert [(r["position"], r["block"], r["run"]) for r in layers] == [(0, 0, 1), (1, 1, 1), (2, 1, 2), (3, 2, 1)]
    assert all(0 < b < 2 for b in expected) and len(set(expected)) == 4
    by_bi = sorted(range(4), key=lambda i: -expected[i])
    assert [layers[i]["rank"] for i in by_bi] == [1, 2, 3, 4]

    rows = list(csv.DictReader((tmp_path / "influence.csv").open()))
    assert [float(r["bi"]) for r in rows] == pytest.approx(expected, rel=1e-5)
    assert json.loads((tmp_path / "influence.json").read_text()) == result
    md = (tmp_path / "influence.md").read_text()
    assert md.count("\n| ") == 5 and f"| 2 | 1 | 2 | {expected[2]:.5f} |" in md


def test_the_trace_is_the_stream_hidden_ends_with_including_two_lanes():
    from trainer.model_config import ModelConfig

    cfg = ModelConfig(vocab_size=64, model_dim=32, num_heads=2, num_kv_heads=1, unique_blocks=4,
                      virtual_layers=(0, 1, 2, 1, 2, 3), parallel_from_block=3, skip_gates=True, xsa_last=2)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():  # output projections start at zero: give every layer something to do
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.05)
    ids = torch.randint(0, 64, (2, 16))
    trace = []
    with torch.no_grad():
        h = model.hidden(ids, trace=trace)
        bis = layer_influence(model, ids.flatten(), 16)
        streams = [model.embed(ids)] + trace
    assert len(trace) == 6 and torch.allclose(rms_norm(trace[-1]), h)
    direct = [float((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean())
              for a, b in zip(streams, streams[1:])]
    assert bis == pytest.approx(direct, rel=1e-5) and min(bis) > 0


def test_without_float_weights_it_reads_the_artifact(tiny_corpus, trained_run, tmp_path):
    run_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / WEIGHTS_FILE).unlink()
    floats = influence_report(run_dir, tiny_corpus["data"], tiny_corpus["tokenizer"], 256, tmp_path / "a", "cpu")
    quantized = influence_report(copy, tiny_corpus["data"], tiny_corpus["tokenizer"], 256, None, "cpu")
    assert quantized["weights"] == "model.ptz" and (copy / "influence.md").is_file()
    a, b = ([r["bi"] for r in x["layers"]] for x in (floats, quantized))
    assert a != b and b == pytest.approx(a, rel=0.1)  # int8 round trip: close, not equal


def test_cli_writes_the_report_and_rejects_bad_input(tiny_corpus, trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    args = ["influence", str(run_dir), "--data", str(tiny_corpus["data"]), "--tokenizer", str(tiny_corpus["tokenizer"]),
            "--device", "cpu"]
    assert main(args + ["--tokens", "128", "--out", str(tmp_path / "r")]) == 0
    assert "least to most influential" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"influence.json", "influence.csv", "influence.md"}
    assert main(args + ["--tokens", "0"]) == 2
    assert "--tokens 0" in capsys.readouterr().err
    assert main(["influence", str(tmp_path / "nothing")] + args[2:]) == 2
    assert "neither weights.pt nor model.ptz" in capsys.readouterr().err
