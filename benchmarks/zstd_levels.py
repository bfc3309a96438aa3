"""Compressed size and time of artifact payloads at several zstd levels (CPU).

    python benchmarks/zstd_levels.py runs/*/model.ptz [--bits 8 6 5] [--levels 1 2 22]

Each artifact is loaded, re-quantized at each bit width (`trainer.artifact.pack`) and the payload compressed
at each level; one line per (artifact, bits).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import zstandard

from trainer import artifact


def main() -> None:
    """Print size and seconds per level for every artifact and bit width."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="model.ptz files of trained runs")
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 6, 5], help="quantization bits (default 8 6 5)")
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 2, 22], help="zstd levels (default 1 2 22)")
    args = parser.parse_args()
    for path in args.artifacts:
        cfg, state = artifact.load(path)
        for bits in args.bits:
            export = dataclasses.replace(cfg.export, quant_bits=bits)
            payload = artifact.pack(state, dataclasses.replace(cfg, export=export))
            cells = []
            for level in args.levels:
                start = time.perf_counter()
                size = len(zstandard.ZstdCompressor(level=level).compress(payload))
                cells.append(f"L{level} {size:,} B {time.perf_counter() - start:.2f} s")
            print(f"{path.parent.name} int{bits} payload {len(payload):,} B: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
