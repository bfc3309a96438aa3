"""Re-export a finished run under other export settings and score the round trip, without training again.

Training never reads the export section, so a run's saved float weights (weights.pt, written by
`trainer train --save-weights` and by every `search rerun` run) give exactly the artifact and round-trip
val_bpb that training the same run with other export settings would have given.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import torch

from trainer import artifact
from trainer.bpb import byte_table, load_sentencepiece
from trainer.model_config import ConfigError
from trainer.components import WEIGHTS_FILE
from trainer.data.shards import TokenStream, load_val_tokens
from trainer.device_lease import DeviceLease, hand_on, take_turn
from trainer.evaluate import evaluate
from trainer.export_pipeline import BackgroundWrite, export_payload
from trainer.metrics import METRICS_FILE, RunMetrics
from trainer.run_config import RunConfig, apply_overrides, from_dict, parse_override
from trainer.runtime import default_device
from trainer.trainer import load_weights

EXPORTS_DIR = "exports"


def export_overrides(overrides: list[str]) -> list[str]:
    """The overrides, checked to touch only the export section (the weights fix everything else)."""
    for item in overrides:
        (section, _key), _value = parse_override(item)
        if section != "export":
            raise ConfigError(f"--set {item!r}: only export.* settings can change after training; "
                              "a model or train setting needs a new run (`trainer train`)")
    return overrides


def export_name(overrides: list[str]) -> str:
    """A file-name slug for a set of export overrides ('as_trained' for none)."""
    if not overrides:
        return "as_trained"
    parts = []
    for item in overrides:
        (_section, key), _value = parse_override(item)
        parts.append(f"{key}_{item.split('=', 1)[1]}")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "__".join(parts))


def run_config(run_dir: Path, overrides: list[str]) -> tuple[RunConfig, RunMetrics]:
    """The run's config (from its metrics.json) with export overrides applied, and those metrics."""
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: not a finished run; pass the --out folder of a `trainer train` run")
    metrics = RunMetrics.read(metrics_path)
    data = apply_overrides(metrics.config, export_overrides(overrides))
    return from_dict(data, where=f"{metrics_path} with {overrides}"), metrics


def reexport(run_dir: Path, overrides: list[str], data_dir: Path, tokenizer_path: Path,
             out_path: Path | None = None, device: str | None = None, lease: DeviceLease | None = None) -> dict:
    """Export run_dir's weights with the overrides, score the round trip on the whole val split, write JSON.

    lease: a device shared with other runs; held from loading the weights to the end of the evaluation (the
    artifact goes on compressing after it is handed on)."""
    run_dir = Path(run_dir)
    cfg, trained = run_config(run_dir, overrides)
    weights_path = run_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: this run kept no float weights; train it with "
                                "`trainer train --save-weights` (every `search rerun` run keeps them)")
    out_path = Path(out_path) if out_path else run_dir / EXPORTS_DIR / f"{export_name(overrides)}.ptz"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dev = default_device(device)
    start = time.perf_counter()
    # What the CPU reads comes before the turn: a shared device waits for no file, and a missing one fails first.
    table = byte_table(load_sentencepiece(tokenizer_path), cfg.model.vocab_size)
    val_tokens = load_val_tokens(data_dir, cfg.model.vocab_size, cfg.train.final_val_tokens or None)
    train_tokens = cfg.export.gptq and cfg.export.gptq_calibration == "train"  # what GPTQ measures H on
    calibration = TokenStream(data_dir, cfg.model.vocab_size) if train_tokens else None
    wait_s = take_turn(lease) if lease is not None else 0.0
    try:
        model = load_weights(cfg, weights_path, dev)
        payload, exported = export_payload(model, cfg, calibration)
        writing = BackgroundWrite(payload, cfg, out_path, exported.encoded)
        model.load_state_dict(artifact.unpack(payload)[1])
        post = evaluate(model, val_tokens, table, cfg.train.seq_len, cfg.train.val_batch_tokens, dev)
        del model  # so that handing the lease on also hands on the model's memory
        if lease is not None:
            hand_on(lease)
        info, write_s = writing.result()
    finally:
        if lease is not None:
            lease.release()
    exported = dataclasses.replace(exported, artifact=info, write_s=write_s)

    result = {
        "run_dir": str(run_dir),
        "overrides": list(overrides),
        "export": cfg.to_dict()["export"],
        "artifact": str(out_path),
        "val_bpb": post.val_bpb,
        "val_loss": post.val_loss,
        "val_bpb_prequant": trained.val_bpb_prequant,
        "roundtrip_cost_bpb": post.val_bpb - trained.val_bpb_prequant,
        "trained_val_bpb": trained.val_bpb,
        "artifact_bytes": info.artifact_bytes,
        "model_bytes": info.model_bytes,
        "code_bytes": info.code_bytes,
        "limit_bytes": cfg.export.limit_bytes,
        "over_limit": not artifact.within_limit(info, cfg.export),
        "upgraded_bits": exported.upgraded_bits(cfg),
        "export_detail": exported.describe(),  # widths of the quantized tensors, the measured fill's tries, seconds
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "wall_s": time.perf_counter() - start,
        "device_wait_s": wait_s,
    }
    out_path.with_suffix(".json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def describe(result: dict) -> str:
    """One line: the export, its round-trip val_bpb and cost, and its bytes against the limit."""
    over = "OVER the limit" if result["over_limit"] else "fits"
    return (f"{result['artifact']}: val_bpb {result['val_bpb']:.4f} (pre-quant {result['val_bpb_prequant']:.4f}, "
            f"round trip {result['roundtrip_cost_bpb']:+.4f}) artifact_bytes {result['artifact_bytes']:,} "
            f"of {result['limit_bytes']:,}: {over}\n  export: {result['export_detail']}")
