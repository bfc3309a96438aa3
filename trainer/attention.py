"""Causal attention kernel choice: flash-attn where it is installed, PyTorch SDPA otherwise.

The choice is made once, when the model is built: importing or probing inside forward() would be a
torch.compile graph break, and one inside the layer loop sends the whole forward back to eager.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _load_flash():
    """flash-attn's kernel taking (B, T, H, D) tensors, or None when none is installed."""
    try:  # flash-attn-4 (CuTe DSL, Hopper/Blackwell)
        from flash_attn.cute import flash_attn_func  # type: ignore

        return flash_attn_func
    except Exception:
        pass
    try:  # flash-attn-3 (Hopper)
        from flash_attn_interface import flash_attn_func  # type: ignore

        return flash_attn_func
    except Exception:
        return None


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: (B, H, T, D), k/v: (B, Hkv, T, D) -> (B, H, T, D); grouped-query heads broadcast."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))


def pick_attention(use_flash: bool) -> tuple[str, Attention]:
    """The kernel to use and its name: flash-attn on CUDA tensors when installed and wanted, else SDPA."""
    flash = _load_flash() if use_flash else None
    if flash is None:
        return "sdpa", sdpa_attention

    def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not q.is_cuda:  # CPU runs (tests, --smoke) take the SDPA path
            return sdpa_attention(q, k, v)
        out = flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2)

    return "flash", flash_attention
