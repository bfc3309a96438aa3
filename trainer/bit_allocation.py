"""Mixed int5/int6 (or int6/int8) exports: which block matrices get export.upgrade_bits instead of quant_bits.

Rounding a row to a grid of step s adds noise of variance s^2 / 12 to each weight, so a matrix's expected output
error per call is sum over rows of s_i^2 / 12 * tr(H), and every virtual position that runs the matrix adds one
call. Per code, an upgrade saves that times the same constant (1/qmax(b)^2 - 1/qmax(b')^2 of the clip), and costs
the same bytes per code, so the matrices are ranked by uses * mean(clip_i^2) * mean(diag H) (without Hessians:
uses * mean(clip_i^2), a weight-only proxy) and upgraded greedily, each only while the size model predicts the
artifact still fits under the limit with its safety margin.
"""
from __future__ import annotations

from collections import Counter

import torch

from trainer.model_config import ArtifactConfig
from trainer.quant import row_clip
from trainer.schedule import build_schedule
from trainer.sizing.size_model import predict, upgrade_candidates, upgrade_cap, upgrades_on


def uses(cfg: ArtifactConfig) -> dict[str, int]:
    """How many virtual layers run each upgrade candidate (a shared block runs at several)."""
    schedule = build_schedule(cfg.model)
    runs = {"attns": Counter(layer.block for layer in schedule), "mlps": Counter(layer.mlp for layer in schedule)}
    count = {}
    for spec in upgrade_candidates(cfg):
        group, index = (spec.name.split(".") + ["", ""])[:2]
        count[spec.name] = runs[group][int(index)] if group in runs and index.isdigit() else 1
    return count


def sensitivity(weight: torch.Tensor, clip_quantile: float, hessian: torch.Tensor | None, calls: int) -> float:
    """Expected output error per code that a finer grid removes, up to a factor shared by every matrix."""
    clip = row_clip(weight.detach().float(), clip_quantile)
    scale = hessian.diagonal().float().mean().item() if hessian is not None else 1.0
    return calls * clip.square().mean().item() * scale


def rank(state: dict[str, torch.Tensor], cfg: ArtifactConfig,
         hessians: dict[str, torch.Tensor] | None = None) -> list[str]:
    """The upgrade candidates, most sensitive first (ties by name)."""
    calls = uses(cfg)
    score = {spec.name: sensitivity(state[spec.name], cfg.export.clip_quantile,
                                    (hessians or {}).get(spec.name), calls[spec.name])
             for spec in upgrade_candidates(cfg)}
    return sorted(score, key=lambda name: (-score[name], name))


def allocate(state: dict[str, torch.Tensor], cfg: ArtifactConfig,
             hessians: dict[str, torch.Tensor] | None = None) -> dict[str, int]:
    """Matrices exported at export.upgrade_bits: down the ranking, each one whose upgrade is still predicted to
    fit, at most upgrade_cap of them. Every other quantized tensor keeps its config width."""
    if not upgrades_on(cfg.export):
        return {}
    chosen: dict[str, int] = {}
    for name in rank(state, cfg, hessians):
        if len(chosen) == upgrade_cap(cfg):
            break
        trial = {**chosen, name: cfg.export.upgrade_bits}
        if predict(cfg, bits=trial).fits:
            chosen = trial
    return chosen
