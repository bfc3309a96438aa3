"""Causal attention kernel choice: flash-attn where it is installed, PyTorch SDPA otherwise.

The choice is made once, when the model is built: importing or probing inside forward() would be a
torch.compile graph break, and one inside the layer loop sends the whole forward back to eager.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# train.attention: "auto" takes flash-attn when installed, else SDPA's own choice;
# "sdpa_<backend>" pins one SDPA backend on CUDA (CPU runs always use plain SDPA).
SDPA_BACKENDS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
}
ATTENTION_CHOICES = ("auto", "flash", "sdpa", *SDPA_BACKENDS)


def _load_flash():
    """A causal flash-attn kernel taking (B, T, H, D) tensors, or None when none is installed."""
    try:  # flash-attn-4 as a custom op: torch.compile keeps one graph
        from trainer.flash_op import flash_attn_4  # not shipped: a training speed-up

        return flash_attn_4()
    except Exception:
        pass
    for module in ("flash_attn.cute", "flash_attn_interface"):  # flash-attn-4's own function, flash-attn-3
        try:
            func = importlib.import_module(module).flash_attn_func
        except Exception:
            continue
        return lambda q, k, v: func(q, k, v, causal=True)
    return None


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: (B, H, T, D), k/v: (B, Hkv, T, D) -> (B, H, T, D); grouped-query heads broadcast."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1))


def _pinned_sdpa(backend: SDPBackend) -> Attention:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not q.is_cuda:
            return sdpa_attention(q, k, v)
        if k.size(1) != q.size(1):  # not every backend takes GQA: repeat the KV heads explicitly
            k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
            v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return attend


def _flash_attention(flash) -> Attention:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not q.is_cuda:  # CPU runs (tests, --smoke) take the SDPA path
            return sdpa_attention(q, k, v)
        out = flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2)

    return attend


def _probe(flash, heads: tuple[int, int, int], device: torch.device) -> str:
    """'' when flash runs a causal forward and backward with these (heads, kv heads, head dim) on device, else why."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        q, k, v = (torch.randn(1, 128, n, heads[2], device=device, dtype=dtype, requires_grad=True)
                   for n in (heads[0], heads[1], heads[1]))
        flash(q, k, v).float().sum().backward()
        return ""
    except Exception as exc:  # any failure: the kernel does not run here
        return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"


def pick_attention(choice: str = "auto", heads: tuple[int, int, int] | None = None,
                   probe_device: torch.device | None = None) -> tuple[str, Attention]:
    """The kernel for a train.attention value, and the name it is logged under. With heads and probe_device,
    flash-attn is first run once there: "auto" falls back to SDPA (and says why) where it fails."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"train.attention: '{choice}' is not one of {ATTENTION_CHOICES}")
    if choice in SDPA_BACKENDS:
        return choice, _pinned_sdpa(SDPA_BACKENDS[choice])
    if choice == "sdpa":
        return "sdpa", sdpa_attention
    flash = _load_flash()
    failure = _probe(flash, heads, probe_device) if flash is not None and heads and probe_device else ""
    if flash is not None and not failure:
        return "flash", _flash_attention(flash)
    if choice == "flash":
        raise ValueError(
            f"train.attention: 'flash' asks for flash-attn, which fails here ({failure}); use 'auto' or 'sdpa'"
            if failure else "train.attention: 'flash' asks for flash-attn, which is not installed here; "
            "install flash-attn-4 (pip install '.[flash]') or use 'auto'"
        )
    return ("sdpa" + (f" (flash-attn failed: {failure})" if failure else "")), sdpa_attention
