"""GPTQ: Hessian-aware rounding of the block matrices onto the artifact's per-row symmetric grid.

A linear layer y = x W^T quantized to Q makes the output error ||X (W - Q)^T||^2 = tr((W - Q) H (W - Q)^T) with
H = X^T X over its inputs. GPTQ (Frantar et al., 2022) rounds one column at a time, most active input first
(act-order), and moves each column's rounding error onto the columns not yet rounded through the upper Cholesky
factor of H^-1, so the later columns compensate for it. collect_hessians measures H on calibration batches (training
tokens, or text the model generates itself); quantize_gptq returns codes and scales that dequantize_rows reads.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from functools import partial

import numpy as np
import torch

from trainer.data.shards import TokenStream
from trainer.model import GPT, CastedLinear
from trainer.quant import qmax, round_rows, row_scales
from trainer.schedule import tensor_layout

# Per-row clip thresholds tried (quantiles of |w| in the row); each row keeps the one whose output error is least.
CLIP_QUANTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)


@contextlib.contextmanager
def _eager(model: GPT):
    """Run the model eagerly in eval mode: hooks and growing sequences would recompile a compiled graph."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            yield
    finally:
        model.train(was_training)


def _accumulate(name: str, sums: dict, rows: dict, _module: torch.nn.Module, args: tuple) -> None:
    x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
    if name in sums:
        sums[name].addmm_(x.T, x)
    else:
        sums[name] = x.T @ x
    rows[name] = rows.get(name, 0) + x.shape[0]


def collect_hessians(model: GPT, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """H = X^T X / rows of the inputs of every block matrix, in float32 on the model's device.

    A shared block runs at several virtual positions: its hooks fire at each, so its H averages all of them.
    """
    matrices = {spec.name for spec in tensor_layout(model.cfg) if spec.role == "matrix"}
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    hooks = [module.register_forward_pre_hook(partial(_accumulate, f"{name}.weight", sums, rows))
             for name, module in model.named_modules()
             if isinstance(module, CastedLinear) and f"{name}.weight" in matrices]
    device = model.tok_emb.weight.device
    try:
        with _eager(model):
            for batch in batches:
                model.hidden(batch.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: total / rows[name] for name, total in sums.items()}


def calibration_batches(stream: TokenStream, count: int, batch_tokens: int, seq_len: int) -> list[torch.Tensor]:
    """`count` batches of training tokens, each (batch_tokens // seq_len, seq_len), read on from the stream."""
    seqs = max(1, batch_tokens // seq_len)
    return [torch.from_numpy(stream.take(seqs * seq_len).astype(np.int64)).reshape(seqs, seq_len)
            for _ in range(count)]


def generate_calibration(model: GPT, count: int, batch_tokens: int, seq_len: int, temperature: float = 0.8,
                         seed: int = 0) -> list[torch.Tensor]:
    """`count` batches of text the model samples itself at `temperature`, each sequence from a random first token."""
    device = model.tok_emb.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    seqs = max(1, batch_tokens // seq_len)
    batches = []
    with _eager(model):
        for _ in range(count):
            tokens = torch.randint(0, model.cfg.vocab_size, (seqs, 1), device=device, generator=generator)
            while tokens.shape[1] < seq_len:  # no KV cache: each step reruns the prefix (seconds on a GPU)
                probs = torch.softmax(model.logits(tokens)[:, -1].float() / temperature, dim=-1)
                tokens = torch.cat((tokens, torch.multinomial(probs, 1, generator=generator)), dim=1)
            batches.append(tokens.cpu())
    return batches


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor | None:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, or None when that is not positive definite."""
    damped = hessian + damp * hessian.diagonal().mean() * torch.eye(hessian.shape[0], device=hessian.device)
    lower, info = torch.linalg.cholesky_ex(damped)
    if info.item() != 0:
        return None
    upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    return upper if info.item() == 0 and torch.isfinite(upper).all() else None


def gptq_rows(weight: torch.Tensor, scale: torch.Tensor, upper: torch.Tensor, bits: int,
              block_size: int) -> torch.Tensor:
    """Codes of each row, columns rounded in order with the error fed forward through `upper` (rows independent)."""
    w = weight.clone()
    codes = torch.empty_like(w)
    step = scale.float().clamp_min(torch.finfo(torch.float16).tiny)
    cols = w.shape[1]
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, u = w[:, start:end], upper[start:end, start:end]
        errors = torch.empty_like(block)
        for j in range(end - start):
            q = torch.clamp(torch.round(block[:, j] / step), -qmax(bits), qmax(bits))
            codes[:, start + j] = q
            errors[:, j] = (block[:, j] - q * step) / u[j, j]
            block[:, j:] -= errors[:, j, None] * u[j, j:]
        w[:, end:] -= errors @ upper[start:end, end:]  # the rest of the row absorbs this block's error
    return codes.to(torch.int8)


def output_error_rows(weight: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                      hessian: torch.Tensor | None) -> torch.Tensor:
    """Each row's share of tr((W - Q) H (W - Q)^T); with no H, its squared weight error."""
    diff = weight.float() - codes.float() * scale.float()[:, None]
    return ((diff @ hessian) * diff).sum(dim=1) if hessian is not None else diff.square().sum(dim=1)


def quantize_gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, damp: float = 0.01, block_size: int = 128,
                  clip_quantiles: tuple[float, ...] = CLIP_QUANTILES) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ of one matrix to (int8 codes, fp16 scales) per row, each row at the clip with the least output error.

    Falls back to round-to-nearest (clip still chosen by output error, or by weight error if H is not finite) when
    H + damping is not positive definite. Runs on H's device; returns CPU tensors.
    """
    h = hessian.detach().float()
    w = weight.detach().float().to(h.device, copy=True)
    if tuple(h.shape) != (w.shape[1], w.shape[1]):
        raise ValueError(f"Hessian of shape {tuple(h.shape)} does not match a weight with {w.shape[1]} columns")
    h = h.clone()
    dead = h.diagonal() <= 0  # inputs that were always zero: their weights never reach the output
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(h.diagonal(), descending=True)  # act-order: most active inputs first
    h, w = h[order][:, order], w[:, order]
    upper = _inverse_cholesky(h, damp) if torch.isfinite(h).all() else None
    usable = h if torch.isfinite(h).all() else None
    # Every candidate clip at once: rows are independent, so stack the candidates as extra rows.
    scales = torch.cat([row_scales(w, bits, q) for q in clip_quantiles])
    stacked = w.repeat(len(clip_quantiles), 1)
    if upper is None:
        codes = round_rows(stacked, scales, bits)
    else:
        codes = gptq_rows(stacked, scales, upper, bits, block_size)
    errors = output_error_rows(stacked, codes, scales, usable).view(len(clip_quantiles), -1)
    best = errors.argmin(dim=0)
    rows = torch.arange(w.shape[0], device=w.device)
    codes = codes.view(len(clip_quantiles), *w.shape)[best, rows][:, torch.argsort(order)]
    scale = scales.view(len(clip_quantiles), -1)[best, rows]
    return codes.cpu().contiguous(), scale.cpu().contiguous()
