"""Block Influence of a trained run: how much each virtual layer changes the residual stream.

BI of a layer = 1 - cosine similarity of the stream entering it and the stream leaving it, averaged over tokens
(with two residual lanes: of the lanes' mean). A layer with a low BI changes the stream little: the cheapest to
repeat or to drop. Reads the run's float weights (weights.pt), else its artifact (model.ptz, quantized).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer import artifact
from trainer.bpb import load_sentencepiece
from trainer.components import WEIGHTS_FILE
from trainer.data.shards import load_val_tokens
from trainer.metrics import METRICS_FILE, RunMetrics
from trainer.model import GPT
from trainer.model_config import ConfigError
from trainer.run_config import RunConfig, TrainConfig, from_dict
from trainer.runtime import default_device
from trainer.trainer import build_model, load_weights

ARTIFACT_FILE = "model.ptz"
REPORT_STEM = "influence"
COLUMNS = ("position", "block", "run", "bi", "rank")


@dataclass(frozen=True)
class LayerInfluence:
    """One virtual layer: its position, block, which run of that block it is (1: first), BI and rank (1: largest)."""

    position: int
    block: int
    run: int
    bi: float
    rank: int


def layer_influence(model: GPT, tokens: torch.Tensor, seq_len: int, batch_seqs: int = 8) -> list[float]:
    """Mean 1 - cos(input, output) per virtual layer over every token of `tokens`, cut into seq_len sequences."""
    seqs = tokens[: len(tokens) // seq_len * seq_len].view(-1, seq_len)
    if len(seqs) == 0:
        raise ConfigError(f"influence: {len(tokens)} tokens make no sequence of {seq_len}; pass --tokens >= {seq_len}")
    device = next(model.parameters()).device
    totals = torch.zeros(len(model.steps), dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(seqs), batch_seqs):
            ids = seqs[start:start + batch_seqs].to(device)
            trace: list[torch.Tensor] = []
            model.hidden(ids, trace=trace)
            streams = [model.embed(ids)] + trace
            for i in range(len(trace)):
                cos = F.cosine_similarity(streams[i].float(), streams[i + 1].float(), dim=-1)
                totals[i] += (1.0 - cos).double().sum().cpu()
    return (totals / seqs.numel()).tolist()


def ranked(model: GPT, bis: list[float]) -> list[LayerInfluence]:
    """The per-layer rows: block, run of the block, BI and rank (1 = changes the stream most)."""
    order = sorted(range(len(bis)), key=lambda i: -bis[i])
    rank = {i: r + 1 for r, i in enumerate(order)}
    runs: dict[int, int] = {}
    rows = []
    for i, step in enumerate(model.steps):
        runs[step.block] = runs.get(step.block, 0) + 1
        rows.append(LayerInfluence(step.position, step.block, runs[step.block], bis[i], rank[i]))
    return rows


def load_run_model(run_dir: Path, device: torch.device) -> tuple[GPT, RunConfig, str]:
    """The run's model with its float weights (weights.pt), else its artifact's; and which file it read."""
    run_dir = Path(run_dir)
    metrics_path, weights_path, artifact_path = run_dir / METRICS_FILE, run_dir / WEIGHTS_FILE, run_dir / ARTIFACT_FILE
    cfg = from_dict(RunMetrics.read(metrics_path).config, where=str(metrics_path)) if metrics_path.is_file() else None
    if weights_path.is_file():
        if cfg is None:
            raise FileNotFoundError(f"{metrics_path}: weights.pt needs the run's metrics.json for its config; pass "
                                    "the --out folder of a finished `trainer train` run")
        return load_weights(cfg, weights_path, device), cfg, WEIGHTS_FILE
    if not artifact_path.is_file():
        raise FileNotFoundError(f"{run_dir}: neither {WEIGHTS_FILE} nor {ARTIFACT_FILE}; pass the --out folder of a "
                                "finished `trainer train` run")
    stored, state = artifact.load(artifact_path)
    if cfg is None:
        cfg = RunConfig(model=stored.model, train=TrainConfig(), export=stored.export).validate()
    model = build_model(cfg, device)
    model.load_state_dict(state)
    return model, cfg, ARTIFACT_FILE


def influence_report(run_dir: Path, data_dir: Path, tokenizer_path: Path, tokens: int = 65_536,
                     out_dir: Path | None = None, device: str | None = None) -> dict:
    """Compute the run's Block Influence on `tokens` val tokens; write influence.json/.csv/.md; return the JSON."""
    dev = default_device(device)
    model, cfg, source = load_run_model(run_dir, dev)
    vocab = load_sentencepiece(tokenizer_path).get_piece_size()
    if vocab != cfg.model.vocab_size:
        raise ConfigError(f"--tokenizer {tokenizer_path}: {vocab} pieces but the model has vocab_size "
                          f"{cfg.model.vocab_size}; pass the tokenizer the run was trained with")
    val = load_val_tokens(data_dir, cfg.model.vocab_size, tokens)
    seq_len = min(cfg.train.seq_len, len(val))
    rows = ranked(model, layer_influence(model, val, seq_len))
    result = {
        "run_dir": str(run_dir), "weights": source, "tokens": len(val) // seq_len * seq_len, "seq_len": seq_len,
        "order": list(cfg.model.schedule_order), "unique_blocks": cfg.model.unique_blocks,
        "definition": "bi = mean over tokens of 1 - cos(stream into the layer, stream out of it); two lanes: their "
                      "mean; rank 1 = largest bi",
        "layers": [dict(zip(COLUMNS, (r.position, r.block, r.run, r.bi, r.rank))) for r in rows],
    }
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{REPORT_STEM}.json").write_text(json.dumps(result, indent=2))
    (out / f"{REPORT_STEM}.csv").write_text(to_csv(rows))
    (out / f"{REPORT_STEM}.md").write_text(to_markdown(result, rows))
    return result


def to_csv(rows: list[LayerInfluence]) -> str:
    """The rows as CSV with a header."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows((r.position, r.block, r.run, f"{r.bi:.6g}", r.rank) for r in rows)
    return buf.getvalue()


def to_markdown(result: dict, rows: list[LayerInfluence]) -> str:
    """A Markdown table of the rows under a line saying what was measured."""
    lines = [f"# Block Influence of `{result['run_dir']}`", "",
             f"{result['tokens']:,} val tokens in sequences of {result['seq_len']}, {result['weights']}; "
             f"{result['definition']}.", "",
             "| position | block | run | BI | rank |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.position} | {r.block} | {r.run} | {r.bi:.5f} | {r.rank} |" for r in rows]
    return "\n".join(lines) + "\n"


def describe(result: dict) -> str:
    """The layers from least to most influential, one line."""
    layers = sorted(result["layers"], key=lambda r: r["bi"])
    return "least to most influential: " + ", ".join(f"{r['position']} (block {r['block']}) {r['bi']:.4f}"
                                                      for r in layers)
