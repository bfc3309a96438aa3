"""zstd bits per quantized code of each tensor kind in trained artifacts (CPU), to see what training did to them.

    python benchmarks/code_bits.py runs/*/model.ptz [--level 3]

Kinds: `random` (q, k, v, MLP fc: drawn at init), `zero` (output projections: start at zero), `embedding`.
Uniform codes of a b-bit grid cost about b bits; Gaussian ones about log2(qmax / clip-in-sigmas) + 2.05.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import zstandard

from trainer import artifact
from trainer.quant import quantize_rows
from trainer.schedule import TensorSpec


def kind_of(spec: TensorSpec) -> str:
    """Which init a quantized tensor started from."""
    if spec.role == "embedding":
        return "embedding"
    return "zero" if spec.starts_at_zero else "random"


def main() -> None:
    """One line per artifact: init, bits and zstd bits per code of each kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="model.ptz files of trained runs")
    parser.add_argument("--level", type=int, default=3, help="zstd level (default 3: fast, within ~1%% of 22 here)")
    args = parser.parse_args()
    compressor = zstandard.ZstdCompressor(level=args.level)
    for path in args.artifacts:
        cfg, state = artifact.load(path)
        blobs: dict[str, list[bytes]] = {}
        counts: dict[str, int] = {}
        for spec in sorted(artifact.layout_for(cfg), key=lambda s: s.name):
            if spec.role not in ("matrix", "embedding"):
                continue
            codes, _ = quantize_rows(state[spec.name], cfg.export.quant_bits, cfg.export.clip_quantile)
            blobs.setdefault(kind_of(spec), []).append(codes.numpy().tobytes())
            counts[kind_of(spec)] = counts.get(kind_of(spec), 0) + codes.numel()
        cells = [f"{k} {8 * len(compressor.compress(b''.join(v))) / counts[k]:.3f}" for k, v in sorted(blobs.items())]
        print(f"{path.parent.name} init={cfg.model.weight_init} int{cfg.export.quant_bits}: bits/code " + ", ".join(cells),
              flush=True)


if __name__ == "__main__":
    main()
