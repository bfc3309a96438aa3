"""flash-attn-4 as a torch custom op, so a compiled model stays one graph.

flash-attn-4's public `flash_attn_func` is an autograd.Function around CuTe DSL kernels that torch.compile
cannot trace: each call would end the compiled graph, 13 times per forward. Registered as an op with a
shape-only (fake) version and its own backward, the kernel is an opaque node the compiler schedules around.
Not part of the artifact's code: the model runs without it (SDPA), this only makes training faster.
"""
from typing import Callable

import torch
from torch import Tensor

# forward(q, k, v) -> (out, lse): q (B, T, H, D), k and v (B, T, Hkv, D), lse (B, H, T) float32.
Forward = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
# backward(q, k, v, out, dout, lse) -> (dq, dk, dv), each shaped like its input.
Backward = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
Attend = Callable[[Tensor, Tensor, Tensor], Tensor]

NAMESPACE = "recurrence_search"
_registered: dict[str, Attend] = {}


def causal_attention_op(name: str, forward: Forward, backward: Backward) -> Attend:
    """Causal attention on (B, T, H, D) tensors from a forward/backward kernel pair, as torch custom ops."""
    if name in _registered:  # an op name can be defined once per process
        return _registered[name]

    @torch.library.custom_op(f"{NAMESPACE}::{name}_forward", mutates_args=())
    def attention_forward(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return forward(q, k, v)

    @attention_forward.register_fake
    def _(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        batch, seq_len, heads, _ = q.shape
        out = q.new_empty((batch, seq_len, heads, v.shape[-1]))
        return out, q.new_empty((batch, heads, seq_len), dtype=torch.float32)

    @torch.library.custom_op(f"{NAMESPACE}::{name}_backward", mutates_args=())
    def attention_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor,
                           lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return backward(q, k, v, out, dout, lse)

    @attention_backward.register_fake
    def _(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor,
          lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def save(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs, *output)

    def gradients(ctx, dout: Tensor, _dlse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, out, lse = ctx.saved_tensors
        return attention_backward(q, k, v, out, dout.contiguous(), lse)

    attention_forward.register_autograd(gradients, setup_context=save)

    def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention_forward(q.contiguous(), k.contiguous(), v.contiguous())[0]

    _registered[name] = attend
    return attend


def flash_attn_4() -> Attend:
    """flash-attn-4's causal kernels as one custom op; ImportError when flash-attn-4 is not installed."""
    from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd  # type: ignore

    def forward(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        out, lse = _flash_attn_fwd(q, k, v, causal=True, return_lse=True)[:2]
        return out, lse

    def backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor,
                 lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dq, dk, dv = _flash_attn_bwd(q, k, v, out, dout, lse, causal=True)[:3]
        return dq, dk, dv

    return causal_attention_op("flash_attn_4", forward, backward)
