"""Causal attention kernel choice: flash-attn where it is installed, PyTorch SDPA otherwise."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _load_flash():
    """Return flash-attn's varlen-free kernel taking (B, T, H, D) tensors, or None."""
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


_FLASH = None
_FLASH_CHECKED = False


def flash_available() -> bool:
    """True when a flash-attn kernel imported."""
    global _FLASH, _FLASH_CHECKED
    if not _FLASH_CHECKED:
        _FLASH, _FLASH_CHECKED = _load_flash(), True
    return _FLASH is not None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, use_flash: bool) -> torch.Tensor:
    """q: (B, H, T, D), k/v: (B, Hkv, T, D) -> (B, H, T, D); grouped-query heads broadcast."""
    if use_flash and q.is_cuda and flash_available():
        out = _FLASH(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))
