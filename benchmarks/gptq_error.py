"""GPTQ against round-to-nearest on a trained run's weights: each layer's output error and the round trip's val_bpb.

    python benchmarks/gptq_error.py RUN_DIR --data DATA_DIR --tokenizer TOKENIZER.model [--bits 5 6]
        [--batches 16] [--batch-tokens 16384] [--val-tokens 262144]

RUN_DIR: a finished run with weights.pt and metrics.json (`trainer train --save-weights`). The Hessians come
from --batches batches of the data's training tokens (export.gptq_calibration: train); the errors summed are
tr((W - Q) H (W - Q)^T) over the block matrices, and val_bpb is scored on a prefix of the val split.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from trainer import artifact
from trainer.bpb import byte_table, load_sentencepiece
from trainer.data.shards import TokenStream, load_val_tokens
from trainer.evaluate import evaluate
from trainer.gptq import calibration_batches, collect_hessians
from trainer.run_config import from_dict
from trainer.trainer import build_model


def output_error(state: dict, restored: dict, hessians: dict) -> float:
    """Sum over the block matrices of tr((W - Q) H (W - Q)^T)."""
    return sum(((restored[n] - state[n]) @ h * (restored[n] - state[n])).sum().item() for n, h in hessians.items())


def main() -> None:
    """Print, per bit width, RTN's and GPTQ's summed output error and round-trip val_bpb."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--bits", nargs="+", type=int, default=[5, 6])
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=16_384)
    parser.add_argument("--val-tokens", type=int, default=262_144)
    args = parser.parse_args()
    cfg = from_dict(json.loads((args.run_dir / "metrics.json").read_text())["config"])
    state = torch.load(args.run_dir / "weights.pt", map_location="cpu", weights_only=True)
    device = torch.device("cpu")
    model = build_model(cfg, device)
    model.load_state_dict(state)
    began = time.perf_counter()
    stream = TokenStream(args.data, cfg.model.vocab_size)
    hessians = collect_hessians(model, calibration_batches(stream, args.batches, args.batch_tokens, cfg.train.seq_len))
    print(f"Hessians of {len(hessians)} matrices from {args.batches * args.batch_tokens:,} tokens in "
          f"{time.perf_counter() - began:.1f} s", flush=True)
    table = byte_table(load_sentencepiece(args.tokenizer), cfg.model.vocab_size)
    val = load_val_tokens(args.data, cfg.model.vocab_size, args.val_tokens)

    def val_bpb(weights: dict) -> float:
        model.load_state_dict(weights)
        return evaluate(model, val, table, cfg.train.seq_len, cfg.train.val_batch_tokens, device).val_bpb

    print(f"pre-quantization val_bpb {val_bpb(state):.4f} over {len(val):,} tokens", flush=True)
    for bits in args.bits:
        cells = []
        for gptq in (False, True):
            export = dataclasses.replace(cfg.export, quant_bits=bits, embedding_bits=8, gptq=gptq)
            began = time.perf_counter()
            restored = artifact.unpack(artifact.pack(state, dataclasses.replace(cfg, export=export), hessians))[1]
            seconds = time.perf_counter() - began
            cells.append(f"{'GPTQ' if gptq else 'RTN'} error {output_error(state, restored, hessians):.4g} "
                         f"val_bpb {val_bpb(restored):.4f} pack {seconds:.1f} s")
        print(f"int{bits} (embedding int8): " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
