"""Artifact file bytes and seconds per codec and byte shuffle, at several bit widths (CPU).

    python benchmarks/export_codecs.py RUN_DIR [RUN_DIR ...] [--bits 5 6 8] [--codecs zstd brotli lzma]
    python benchmarks/export_codecs.py --synthetic spaces/presets/baseline.yaml [--distribution student_t5]

RUN_DIR: a finished run with weights.pt and metrics.json (`trainer train --save-weights`). --synthetic draws
heavy-tailed weights for a config file's shape instead (trainer/sizing/synthetic.py). Each payload is packed at
each width and written by each codec: without shuffle, with the fp16 part split into byte planes (what
export.byte_shuffle does), and with the whole payload split (every 2 bytes, codes included; --shuffles).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from trainer import artifact, compress
from trainer.run_config import from_dict, load
from trainer.sizing.synthetic import DISTRIBUTIONS, synthetic_state

# plain: as packed; fp16: the fp16 part in byte planes (export.byte_shuffle); all: the whole payload in planes.
SHUFFLES = ("plain", "fp16", "all")


def sources(args: argparse.Namespace):
    """(name, config, float state_dict) of each run or synthetic config."""
    for run_dir in args.runs:
        cfg = from_dict(json.loads((run_dir / "metrics.json").read_text())["config"])
        yield run_dir.name, cfg, torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True)
    for path in args.synthetic:
        cfg = load(path)
        yield f"{path.stem} ({args.distribution})", cfg, synthetic_state(cfg, args.distribution, seed=0)


def main() -> None:
    """Print one line per (source, bits, codec): file bytes and seconds for each shuffle."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders with weights.pt and metrics.json")
    parser.add_argument("--synthetic", nargs="*", type=Path, default=[], help="config files to draw weights for")
    parser.add_argument("--distribution", default="student_t5", choices=DISTRIBUTIONS)
    parser.add_argument("--bits", nargs="+", type=int, default=[5, 6, 8])
    parser.add_argument("--codecs", nargs="+", default=list(compress.available()), choices=compress.CODECS)
    parser.add_argument("--shuffles", nargs="+", default=list(SHUFFLES), choices=SHUFFLES)
    args = parser.parse_args()
    for name, cfg, state in sources(args):
        for bits in args.bits:
            export = dataclasses.replace(cfg.export, quant_bits=bits, embedding_bits=0)
            payload = artifact.pack(state, dataclasses.replace(cfg, export=export))
            starts = {"plain": None, "fp16": artifact.fp16_start(payload), "all": 0}
            for codec in args.codecs:
                cells = []
                for label in args.shuffles:
                    start = starts[label]
                    began = time.perf_counter()
                    size = len(compress.encode(payload, codec, export.zstd_level, start))
                    cells.append(f"{label} {size:,} B {time.perf_counter() - began:.1f} s")
                print(f"{name} int{bits} payload {len(payload):,} B {codec}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
