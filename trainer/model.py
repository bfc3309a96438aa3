"""A small GPT whose depth is a schedule of virtual layers over shared physical blocks.

Read top to bottom: norms and rotary embeddings, attention, MLP, the per-virtual-layer scalars,
then one virtual layer and the loss head as free functions (compiled once, reused by every block),
then GPT, whose forward() walks `self.schedule` (data from trainer.schedule), not branches.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.attention import Attention as AttentionKernel
from trainer.attention import pick_attention
from trainer.model_config import ModelConfig
from trainer.schedule import build_schedule, num_mlps, num_skip_weights, tensor_layout


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Weightless RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Linear layer whose float32 master weight is cast to its input's dtype (bf16 inside blocks on the GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    """Rotary position embedding; cos/sin are recomputed per call (cheap, and no state for torch.compile to guard)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        return freqs.cos()[None, None].to(dtype), freqs.sin()[None, None].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Attention(nn.Module):
    """Grouped-query causal self-attention with QK-norm; the query gain lives in LayerScalars."""

    def __init__(self, cfg: ModelConfig, attend: AttentionKernel):
        super().__init__()
        self.attend = attend
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim, bias=False)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim, bias=False)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim, bias=False)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, bias=False)
        self.proj.weight.data.zero_()  # each layer starts as the identity on the residual stream
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)

    def forward(self, x: torch.Tensor, q_gain: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.c_q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(t, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * q_gain.to(q.dtype)[None, :, None, None]
        y = self.attend(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Two-layer MLP with a squared (leaky) ReLU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden, bias=False)
        self.proj = CastedLinear(cfg.mlp_hidden, cfg.model_dim, bias=False)
        self.proj.weight.data.zero_()
        self.leaky = cfg.activation == "leaky_relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = F.leaky_relu(h, 0.5) if self.leaky else torch.relu(h)
        return self.proj(h.square())


class LayerScalars(nn.Module):
    """Per-virtual-layer learnable scalars, never shared between repeats of a block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.model_dim
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))  # mix of x and x0
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))


def sinusoidal_depth(depth: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal code of each virtual position, shape (depth, dim), unit RMS."""
    pos = torch.arange(depth, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    code = torch.zeros(depth, dim)
    code[:, 0::2], code[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return code / code.pow(2).mean(dim=1, keepdim=True).sqrt()


def block_input(x: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """The normed residual stream, cast to the dtype the blocks compute in."""
    return rms_norm(x).to(compute_dtype)


def virtual_layer(
    x: torch.Tensor,
    x0: torch.Tensor,
    skip: torch.Tensor | None,
    skip_weight: torch.Tensor | None,
    signal: torch.Tensor | None,
    attn: Attention,
    mlp: MLP,
    s: LayerScalars,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """One virtual layer: U-Net skip and depth signal in, its block's attention and MLP, its own scalars.

    A free function of (tensors, modules) so that torch.compile can compile it once and run the same
    graph for every block of one shape (regional compilation; see GPT.compile_layers).
    """
    if skip is not None:
        x = x + skip_weight.to(x.dtype) * skip
    if signal is not None:
        x = x + signal.to(x.dtype)
    mix = s.resid_mix.to(x.dtype)
    x = mix[0] * x + mix[1] * x0
    x = x + s.attn_scale.to(x.dtype) * attn(block_input(x, compute_dtype), s.q_gain)
    return x + s.mlp_scale.to(x.dtype) * mlp(block_input(x, compute_dtype))


def softcapped_logits(h: torch.Tensor, embed: torch.Tensor, softcap: float) -> torch.Tensor:
    """Logits from the tied embedding, soft-capped to (-softcap, softcap), in float32."""
    return softcap * torch.tanh(F.linear(h, embed.to(h.dtype)).float() / softcap)


def loss_head(h: torch.Tensor, embed: torch.Tensor, targets: torch.Tensor, softcap: float, reduction: str) -> torch.Tensor:
    """Cross-entropy in nats of the soft-capped logits (h: final hidden states in the compute dtype)."""
    logits = softcapped_logits(h, embed, softcap)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


class GPT(nn.Module):
    """Token embedding, a schedule of virtual layers over shared blocks, tied soft-capped output."""

    def __init__(
        self,
        cfg: ModelConfig,
        attention: str = "auto",
        compute_dtype: torch.dtype = torch.float32,
        residual_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        # Weights stay float32; blocks and the output projection run in compute_dtype (bf16 on the GPU);
        # the residual stream is float32 unless residual_dtype asks for bf16 (faster, rounds every sum).
        self.cfg, self.compute_dtype, self.residual_dtype = cfg, compute_dtype, residual_dtype
        self.attention_kernel, attend = pick_attention(attention)
        self.schedule = build_schedule(cfg)
        depth = len(self.schedule)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        self.attns = nn.ModuleList(Attention(cfg, attend) for _ in range(cfg.unique_blocks))
        self.mlps = nn.ModuleList(MLP(cfg) for _ in range(num_mlps(cfg)))
        self.layers = nn.ModuleList(LayerScalars(cfg) for _ in range(depth))
        if cfg.depth_signal == "learned":
            self.depth_embed = nn.Parameter(torch.zeros(depth, cfg.model_dim))
        if cfg.depth_signal == "sinusoidal":
            self.depth_gain = nn.Parameter(torch.zeros(depth))  # starts silent; training decides the use
            self.register_buffer("depth_code", sinusoidal_depth(depth, cfg.model_dim), persistent=False)
        if cfg.weight_init == "normal":
            self._normal_init()
        self.num_skips = num_skip_weights(cfg)
        self._compiled = None  # (layer function, loss head) once compile_layers() has run
        self._compiled_eval = False
        if self.num_skips:
            self.skip_weights = nn.Parameter(torch.ones(self.num_skips, cfg.model_dim))

    def _normal_init(self) -> None:
        """Redraw the block matrices that do not start at zero (the layout's word, which the size model reads too)
        from a Gaussian with nn.Linear's default std, 1/sqrt(3 fan_in)."""
        for spec in tensor_layout(self.cfg):
            if spec.role == "matrix" and not spec.starts_at_zero:
                nn.init.normal_(self.get_parameter(spec.name), std=1.0 / math.sqrt(3 * spec.shape[1]))

    def depth_signal(self, position: int) -> torch.Tensor | None:
        """What is added to the residual stream before virtual layer `position`."""
        if self.cfg.depth_signal == "learned":
            return self.depth_embed[position]
        if self.cfg.depth_signal == "sinusoidal":
            return self.depth_gain[position] * self.depth_code[position]
        return None

    def compile_layers(self, for_eval: bool = False, backend: str = "inductor") -> None:
        """Regional compilation: one graph per virtual-layer variant, shared by every block, plus the loss head.

        Blocks of one shape run the same compiled code (their weights are graph inputs), so compile time
        no longer grows with depth. Evaluation (no grad) stays eager unless for_eval.
        """
        compile_fn = lambda fn: torch.compile(fn, dynamic=False, backend=backend)  # noqa: E731
        self._compiled = (compile_fn(virtual_layer), compile_fn(loss_head))
        self._compiled_eval = for_eval

    def _functions(self):
        if self._compiled is not None and (torch.is_grad_enabled() or self._compiled_eval):
            return self._compiled
        return virtual_layer, loss_head

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final normalized hidden states, (B, T, D), in the residual dtype."""
        layer_fn = self._functions()[0]
        x0 = rms_norm(self.tok_emb(input_ids)).to(self.residual_dtype)
        x = x0
        # U-Net over virtual depth: the first half's outputs feed the second half, innermost first.
        encoder = self.num_skips
        skips = []
        for position, layer in enumerate(self.schedule):
            skip, skip_weight = None, None
            if position >= encoder and skips:
                skip, skip_weight = skips.pop(), self.skip_weights[position - encoder]
            x = layer_fn(
                x, x0, skip, skip_weight, self.depth_signal(position),
                self.attns[layer.block], self.mlps[layer.mlp], self.layers[position], self.compute_dtype,
            )
            if position < encoder:
                skips.append(x)
        return rms_norm(x)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Soft-capped logits, (B, T, vocab), in float32."""
        h = self.hidden(input_ids).to(self.compute_dtype)
        return softcapped_logits(h, self.tok_emb.weight, self.cfg.logit_softcap)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy in nats (mean, or per token with reduction='none')."""
        h = self.hidden(input_ids).to(self.compute_dtype)
        return self._functions()[1](h, self.tok_emb.weight, targets, self.cfg.logit_softcap, reduction)
