"""Synthetic run directories for a PROVISIONAL size calibration, until trained artifacts exist.

Weights are drawn row by row from Gaussian, Laplace or Student-t distributions with a spread of row
scales, because trained matrices are heavy-tailed to a degree we do not yet know; fitting one model
across all three makes the derived safety margin cover that spread.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from trainer import artifact
from trainer.model_config import QUANT_BITS
from trainer.run_config import RunConfig, from_dict
from trainer.schedule import TensorSpec, tensor_layout

DISTRIBUTIONS = ("gaussian", "laplace", "student_t5")


def _draw(shape: tuple[int, ...], distribution: str, gen: torch.Generator) -> torch.Tensor:
    """Unit-variance samples of one distribution."""
    if distribution == "gaussian":
        return torch.randn(shape, generator=gen)
    u = torch.rand(shape, generator=gen).clamp(1e-7, 1 - 1e-7)
    if distribution == "laplace":
        # Inverse CDF; a Laplace(b) has variance 2 b^2.
        return -torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs()) / math.sqrt(2)
    if distribution == "student_t5":
        nu = 5
        # t = z / sqrt(chi2_nu / nu), rescaled to unit variance (var of t_nu is nu / (nu - 2)).
        return torch.randn(shape, generator=gen) / torch.sqrt(_chi2(shape, nu, gen) / nu) / math.sqrt(nu / (nu - 2))
    raise ValueError(f"unknown distribution '{distribution}'; use one of {DISTRIBUTIONS}")


def _chi2(shape: tuple[int, ...], nu: int, gen: torch.Generator) -> torch.Tensor:
    """Chi-squared samples with integer nu as a sum of squared normals (seeded by gen)."""
    return (torch.randn((nu,) + tuple(shape), generator=gen) ** 2).sum(0)


def synthetic_tensor(spec: TensorSpec, distribution: str, gen: torch.Generator) -> torch.Tensor:
    """One tensor: matrices get fan-in scaled heavy-tailed rows with log-normal row scales; scalars sit near 1."""
    if spec.role in ("matrix", "embedding"):
        rows = _draw(spec.shape, distribution, gen)
        row_scale = torch.exp(0.3 * torch.randn((spec.shape[0], 1), generator=gen))
        return rows * row_scale / math.sqrt(spec.shape[-1])
    return 1.0 + 0.1 * torch.randn(spec.shape, generator=gen)


def synthetic_state(cfg: RunConfig, distribution: str, seed: int) -> dict[str, torch.Tensor]:
    """A full state_dict for a config with synthetic weights."""
    gen = torch.Generator().manual_seed(seed)
    return {spec.name: synthetic_tensor(spec, distribution, gen) for spec in tensor_layout(cfg.model)}


def write_run(cfg: RunConfig, run_dir: Path, distribution: str, seed: int, code_bytes: int | None = None) -> dict:
    """Write model.ptz + metrics.json (the trainer's run-directory format) for synthetic weights."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = artifact.save(synthetic_state(cfg, distribution, seed), cfg, run_dir / "model.ptz")
    code = info.code_bytes if code_bytes is None else code_bytes
    metrics = {
        "model_bytes": info.model_bytes,
        "payload_bytes": info.payload_bytes,
        "code_bytes": code,
        "artifact_bytes": info.model_bytes + code,
        "config": cfg.to_dict(),
        "synthetic": True,
        "distribution": distribution,
        "seed": seed,
        "device": "synthetic weights (CPU, trainer.artifact.save)",
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# Shapes spanning the search space: widths, depths, sharing, untied MLPs, depth signals and MLP ratios.
CALIBRATION_SHAPES = (
    {"model_dim": 512, "num_heads": 8, "num_kv_heads": 4, "unique_blocks": 9},
    {"model_dim": 512, "num_heads": 8, "num_kv_heads": 4, "unique_blocks": 11, "mlp_mult": 3,
     "virtual_layers": [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]},
    {"model_dim": 832, "num_heads": 8, "num_kv_heads": 4, "unique_blocks": 3, "depth_signal": "learned",
     "virtual_layers": [0, 1, 2] * 4},
    {"model_dim": 768, "num_heads": 12, "num_kv_heads": 6, "unique_blocks": 6, "depth_signal": "sinusoidal",
     "virtual_layers": [0, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 5]},
    {"model_dim": 384, "num_heads": 6, "num_kv_heads": 3, "unique_blocks": 4, "untie_mlp": "full",
     "virtual_layers": [0, 1, 2, 3] * 2},
    {"model_dim": 640, "num_heads": 10, "num_kv_heads": 5, "unique_blocks": 5, "mlp_mult": 3},
)


def calibration_configs(quick: bool = False) -> list[tuple[str, RunConfig, str]]:
    """(name, config, distribution) for every synthetic calibration run."""
    shapes = CALIBRATION_SHAPES[:2] if quick else CALIBRATION_SHAPES
    out = []
    for i, shape in enumerate(shapes):
        for bits in QUANT_BITS:
            for distribution in DISTRIBUTIONS:
                cfg = from_dict({"model": dict(shape), "export": {"quant_bits": bits}}, where=f"synthetic shape {i}")
                out.append((f"synth-s{i}-int{bits}-{distribution}", cfg, distribution))
    return out
