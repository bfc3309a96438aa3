"""Muon for weight matrices (orthogonalized momentum), plus the parameter grouping and LR schedule."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from trainer.run_config import TrainConfig
from trainer.schedule import tensor_layout

# Quintic Newton-Schulz coefficients tuned to push singular values toward 1 in few steps.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def update_dtype(device: torch.device) -> torch.dtype:
    """The Newton-Schulz iteration's dtype: bf16 on GPUs; float32 elsewhere (a CPU's bf16 matmul is ~30x slower)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def orthogonalize(grad: torch.Tensor, steps: int, eps: float = 1e-7) -> torch.Tensor:
    """Approximate U V^T of each matrix's SVD (batched over leading dims) with a Newton-Schulz iteration."""
    a, b, c = NS_COEFFS
    x = grad.to(update_dtype(grad.device))
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """SGD-momentum whose update is orthogonalized, with decoupled weight decay (p <- p * (1 - lr * wd) first).

    Matrices of one shape are orthogonalized together as one batch (a few large launches instead of
    hundreds of small ones); under DDP each rank does every world_size-th matrix of each shape and
    an all-reduce shares the updates.
    """

    def __init__(
        self, params, lr: float, momentum: float, backend_steps: int, nesterov: bool = True, compiled: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                                      weight_decay=weight_decay))
        # Compiled, the iteration's elementwise work fuses into the matmuls' epilogues: one graph per shape.
        self.orthogonalize = torch.compile(orthogonalize, dynamic=False) if compiled else orthogonalize

    @torch.no_grad()
    def step(self):
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            updates: list[torch.Tensor | None] = [None] * len(params)
            for shape, indices in by_shape.items():
                mine = indices[rank::world]
                if not mine:
                    continue
                grads = []
                for i in mine:
                    p = params[i]
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    grads.append(p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf)
                ortho = self.orthogonalize(torch.stack(grads), group["backend_steps"])
                ortho = ortho * max(1.0, shape[0] / shape[1]) ** 0.5
                for i, u in zip(mine, ortho.unbind(0)):
                    updates[i] = u
            if distributed:
                flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device,
                                   dtype=update_dtype(params[0].device))
                offset = 0
                for p, u in zip(params, updates):
                    if u is not None:
                        flat[offset : offset + p.numel()] = u.flatten()
                    offset += p.numel()
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                updates = list(torch.split(flat, [p.numel() for p in params]))
            if group["weight_decay"] > 0:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            for p, u in zip(params, updates):
                p.add_(u.view_as(p).to(p.dtype), alpha=-group["lr"])


def parameter_groups(model: nn.Module) -> tuple[list, list, list]:
    """(embeddings, block matrices, scalars): the token tables (the layout's role "embedding") go to the
    embedding's Adam, the attention and MLP matrices to Muon, everything else (projections of the extra
    embeddings, control scalars) to the scalar Adam."""
    table_names = {s.name for s in tensor_layout(model.cfg) if s.role == "embedding"}
    embeddings, matrices, scalars = [], [], []
    for name, p in model.named_parameters():
        if name in table_names:
            embeddings.append(p)
        elif p.ndim == 2 and name.startswith(("attns.", "mlps.")):
            matrices.append(p)
        else:
            scalars.append(p)
    return embeddings, matrices, scalars


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Adam for the embeddings and scalars (AdamW under adam_weight_decay), Muon for the block matrices; each
    group remembers its base LR."""
    embeddings, matrices, scalars = parameter_groups(model)
    fused = next(model.parameters()).is_cuda
    compiled = fused and cfg.compile and cfg.compile_optimizer
    adam = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)
    adam_class = torch.optim.Adam
    if cfg.adam_weight_decay > 0:  # AdamW decays first, p <- p * (1 - lr * wd), then takes Adam's step
        adam_class, adam["weight_decay"] = torch.optim.AdamW, cfg.adam_weight_decay
    optimizers = [
        adam_class([{"params": embeddings, "lr": cfg.embed_lr, "base_lr": cfg.embed_lr}], **adam),
        Muon(
            matrices,
            lr=cfg.matrix_lr,
            momentum=cfg.muon_momentum,
            backend_steps=cfg.muon_backend_steps,
            compiled=compiled,
            weight_decay=cfg.muon_weight_decay,
        ),
        adam_class([{"params": scalars, "lr": cfg.scalar_lr, "base_lr": cfg.scalar_lr}], **adam),
    ]
    for group in optimizers[1].param_groups:
        group["base_lr"] = cfg.matrix_lr
    return optimizers


def lr_scale(cfg: TrainConfig, step: int, train_s: float) -> float:
    """Linear warmdown to zero over the last warmdown_steps, counted in steps or in remaining wallclock."""
    if cfg.warmdown_steps <= 0:
        return 1.0
    by_steps = max(cfg.max_steps - step, 0) / cfg.warmdown_steps
    step_s = train_s / max(step, 1)
    remaining_s = max(cfg.budget_s - train_s, 0.0)
    by_time = remaining_s / max(cfg.warmdown_steps * step_s, 1e-9)
    return min(1.0, by_steps, by_time)


def muon_momentum(cfg: TrainConfig, step: int) -> float:
    """Momentum warms up from muon_momentum_warmup_start to muon_momentum."""
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0) if cfg.muon_momentum_warmup_steps > 0 else 1.0
    return (1 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def cooldown_scales(start_scale: float, steps: int) -> list[float]:
    """LR scales of a cooldown of `steps` steps: linear from start_scale towards 0, the last step at start/steps."""
    return [start_scale * (steps - i) / steps for i in range(steps)]


def set_schedule(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig, step: int, train_s: float,
                 scale: float | None = None) -> None:
    """Apply this step's LR scale (lr_scale's, unless given) and Muon momentum to every group."""
    scale = lr_scale(cfg, step, train_s) if scale is None else scale
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if isinstance(opt, Muon):
                group["momentum"] = muon_momentum(cfg, step)
