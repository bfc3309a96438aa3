"""A small GPT whose depth is a schedule of virtual layers over shared physical blocks.

Read top to bottom: norms and rotary embeddings, attention, MLP, the per-virtual-layer scalars,
then one virtual layer (single stream or two lanes) and the loss head as free functions (compiled
once, reused by every block), then GPT, whose forward() walks `self.steps` (data from trainer.schedule).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.attention import Attention as AttentionKernel
from trainer.attention import pick_attention
from trainer.embeddings import BigramEmbedding, ValueEmbedding, smear
from trainer.model_config import ModelConfig
from trainer.schedule import (
    active_schedule, build_schedule, num_mlps, num_skip_weights, repeat_positions, runs_parallel, tensor_layout,
)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Weightless RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Linear layer whose float32 master weight is cast to its input's dtype (bf16 inside blocks on the GPU)."""

    fake_quant = None  # training's late QAT sets a weight -> weight map here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.fake_quant is None else self.fake_quant(self.weight)
        return F.linear(x, w.to(x.dtype))


class Rotary(nn.Module):
    """Rotary position embedding over `dims` dims; cos/sin are recomputed per call (no state for torch.compile)."""

    def __init__(self, dims: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        return freqs.cos()[None, None].to(dtype), freqs.sin()[None, None].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2 * cos.size(-1) dims of each head (as two halves); the rest pass through."""
    half = cos.size(-1)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


def exclude_own_value(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: each head's output (B, H, T, D) minus its part along its token's unit value (B, Hkv, T, D) of its group."""
    b, h, t, d = y.shape
    groups = y.reshape(b, v.size(1), h // v.size(1), t, d)
    unit = F.normalize(v, dim=-1).unsqueeze(2)
    return (groups - (groups * unit).sum(-1, keepdim=True) * unit).reshape(b, h, t, d)


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
        self.rotary = Rotary(cfg.rope_dims or cfg.head_dim, cfg.rope_base)

    def forward(
        self, x: torch.Tensor, q_gain: torch.Tensor, value_extra: torch.Tensor | None = None, xsa: bool = False
    ) -> torch.Tensor:
        b, t, d = x.shape
        q = self.c_q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x)
        if value_extra is not None:
            v = v + value_extra.to(v.dtype)
        v = v.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(t, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * q_gain.to(q.dtype)[None, :, None, None]
        y = self.attend(q, k, v)
        if xsa:
            y = exclude_own_value(y, v)
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

    def __init__(self, cfg: ModelConfig, block: int):
        super().__init__()
        d, attention = cfg.model_dim, block not in cfg.attention_off_blocks
        if attention:
            self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))  # mix of x and x0
        if attention:
            self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        if runs_parallel(cfg, block):  # per sublayer (attention, MLP): weights into lanes 0 and 1, residual factor
            sublayers = 2 if attention else 1
            self.lane_post = nn.Parameter(torch.ones(sublayers, 2))
            self.lane_resid = nn.Parameter(torch.full((sublayers,), 1.1**0.5))


def sinusoidal_depth(depth: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal code of each virtual position, shape (depth, dim), unit RMS."""
    pos = torch.arange(depth, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    code = torch.zeros(depth, dim)
    code[:, 0::2], code[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return code / code.pow(2).mean(dim=1, keepdim=True).sqrt()


def block_input(x: torch.Tensor, compute_dtype: torch.dtype, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The normed residual stream (times the LN scale, if any), in the dtype the blocks compute in."""
    h = rms_norm(x).to(compute_dtype)
    return h if scale is None else h * scale.to(compute_dtype)


def join_skip(x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """A U-Net skip into the stream: x + w * skip, or gated, lerp(w * skip, x, sigmoid(gate))."""
    scaled = weight.to(x.dtype) * skip
    return x + scaled if gate is None else torch.lerp(scaled, x, torch.sigmoid(gate.to(x.dtype)))


def virtual_layer(
    x: Tensor, x0: Tensor, skip: Tensor | None, skip_weight: Tensor | None, skip_gate: Tensor | None,
    signal: Tensor | None, value_extra: Tensor | None, attn: Attention | None, mlp: MLP, s: LayerScalars,
    norm_scale: Tensor | None, xsa: bool, compute_dtype: torch.dtype,
) -> Tensor:
    """One virtual layer: U-Net skip and depth signal in, its block's attention and MLP, its own scalars.

    A free function of (tensors, modules) so that torch.compile can compile it once and run the same
    graph for every block of one shape (regional compilation; see GPT.compile_layers).
    """
    if skip is not None:
        x = join_skip(x, skip, skip_weight, skip_gate)
    if signal is not None:
        x = x + signal.to(x.dtype)
    mix = s.resid_mix.to(x.dtype)
    x = mix[0] * x + mix[1] * x0
    if attn is not None:
        x = x + s.attn_scale.to(x.dtype) * attn(block_input(x, compute_dtype, norm_scale), s.q_gain, value_extra, xsa)
    return x + s.mlp_scale.to(x.dtype) * mlp(block_input(x, compute_dtype, norm_scale))


def parallel_layer(
    lane0: Tensor, lane1: Tensor, x0: Tensor, skip0: Tensor | None, skip1: Tensor | None, skip_weight: Tensor | None,
    skip_gate: Tensor | None, signal: Tensor | None, value_extra: Tensor | None, attn: Attention | None, mlp: MLP,
    s: LayerScalars, norm_scale: Tensor | None, xsa: bool, compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """virtual_layer on two residual lanes: attention reads lane 0, the MLP lane 1 (each mixed with x0); each
    sublayer scales both lanes by its residual factor, then adds its output to each with its own weight."""
    if skip0 is not None:
        lane0, lane1 = join_skip(lane0, skip0, skip_weight, skip_gate), join_skip(lane1, skip1, skip_weight, skip_gate)
    if signal is not None:
        lane0, lane1 = lane0 + signal.to(lane0.dtype), lane1 + signal.to(lane1.dtype)
    mix, post, resid = s.resid_mix.to(lane0.dtype), s.lane_post.to(lane0.dtype), s.lane_resid.to(lane0.dtype)
    if attn is not None:
        read = block_input(mix[0] * lane0 + mix[1] * x0, compute_dtype, norm_scale)
        out = s.attn_scale.to(lane0.dtype) * attn(read, s.q_gain, value_extra, xsa)
        lane0, lane1 = resid[0] * lane0 + post[0, 0] * out, resid[0] * lane1 + post[0, 1] * out
    out = s.mlp_scale.to(lane1.dtype) * mlp(block_input(mix[0] * lane1 + mix[1] * x0, compute_dtype, norm_scale))
    return resid[-1] * lane0 + post[-1, 0] * out, resid[-1] * lane1 + post[-1, 1] * out


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
        gpu = torch.device("cuda") if torch.cuda.is_available() else None  # flash-attn is tried once there
        heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.attention_kernel, attend = pick_attention(attention, heads, gpu)
        self.schedule = build_schedule(cfg)
        depth = len(self.schedule)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        # Keyed by block index; blocks in attention_off_blocks have none.
        self.attns = nn.ModuleDict(
            {str(b): Attention(cfg, attend) for b in range(cfg.unique_blocks) if b not in cfg.attention_off_blocks}
        )
        self.mlps = nn.ModuleList(MLP(cfg) for _ in range(num_mlps(cfg)))
        self.layers = nn.ModuleList(LayerScalars(cfg, layer.block) for layer in self.schedule)
        if cfg.depth_signal == "learned":
            self.depth_embed = nn.Parameter(torch.zeros(depth, cfg.model_dim))
        if cfg.depth_signal == "sinusoidal":
            self.depth_gain = nn.Parameter(torch.zeros(depth))  # starts silent; training decides the use
            self.register_buffer("depth_code", sinusoidal_depth(depth, cfg.model_dim), persistent=False)
        self.num_skips = num_skip_weights(cfg)
        if self.num_skips:
            self.skip_weights = nn.Parameter(torch.ones(self.num_skips, cfg.model_dim))
        if self.num_skips and cfg.skip_gates:
            self.skip_gates = nn.Parameter(torch.zeros(self.num_skips, cfg.model_dim))
        if cfg.smear:
            self.smear_gate = nn.Parameter(torch.zeros(cfg.model_dim))
        if cfg.bigram_buckets:
            self.bigram = BigramEmbedding(cfg)
        if cfg.value_embed_dim:
            self.value_embed = ValueEmbedding(cfg)
        if cfg.ln_scale:
            self.register_buffer("ln_scales", (torch.arange(depth) + 1.0).rsqrt(), persistent=False)
        self._init_matrices()
        self._compiled = None  # (layer, parallel layer, loss head) once compile_layers() has run
        self._compiled_eval = False
        self.recurrence_active = True
        self.steps = active_schedule(cfg, True)

    def _init_matrices(self) -> None:
        """Redraw the matrices that do not start at zero (the layout's word, which the size model reads too):
        normal, Gaussian with nn.Linear's default std 1/sqrt(3 fan_in); orthogonal, gain 1; uniform stays nn.Linear's."""
        for spec in tensor_layout(self.cfg):
            if spec.role == "matrix" and not spec.starts_at_zero:
                if self.cfg.weight_init == "normal":
                    nn.init.normal_(self.get_parameter(spec.name), std=1.0 / math.sqrt(3 * spec.shape[1]))
                elif self.cfg.weight_init == "orthogonal":
                    nn.init.orthogonal_(self.get_parameter(spec.name), gain=1.0)

    @property
    def has_repeats(self) -> bool:
        """Whether the schedule runs some block twice (so set_recurrence(False) changes what runs)."""
        return bool(repeat_positions(self.cfg))

    def set_recurrence(self, active: bool) -> None:
        """Run the configured schedule (True, the default) or it without its repeats (False).

        Every layer keeps the scalars of its configured position. Switching on from off starts each repeat's
        own (untied) MLP as an exact copy of its block's MLP.
        """
        was_active, self.recurrence_active = self.recurrence_active, bool(active)
        self.steps = active_schedule(self.cfg, self.recurrence_active)
        if self.recurrence_active and not was_active:
            self._copy_repeat_mlps()

    @torch.no_grad()
    def _copy_repeat_mlps(self) -> None:
        repeats = repeat_positions(self.cfg)
        for layer in self.schedule:
            if layer.position in repeats and layer.mlp != layer.block:
                for own, block in zip(self.mlps[layer.mlp].parameters(), self.mlps[layer.block].parameters()):
                    own.copy_(block)

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
        self._compiled = (compile_fn(virtual_layer), compile_fn(parallel_layer), compile_fn(loss_head))
        self._compiled_eval = for_eval

    def _functions(self):
        if self._compiled is not None and (torch.is_grad_enabled() or self._compiled_eval):
            return self._compiled
        return virtual_layer, parallel_layer, loss_head

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """x0: the normed token embedding (plus bigram, then smear), in the residual dtype."""
        x = self.tok_emb(input_ids)
        if self.cfg.bigram_buckets:
            x = x + self.bigram(input_ids)
        x = rms_norm(x)
        if self.cfg.smear:
            x = smear(x, self.smear_gate)
        return x.to(self.residual_dtype)

    def hidden(self, input_ids: torch.Tensor, trace: list | None = None) -> torch.Tensor:
        """Final normalized hidden states, (B, T, D), in the residual dtype; trace gets each layer's output
        stream (two lanes: their mean)."""
        layer_fn, parallel_fn, _ = self._functions()
        x0 = self.embed(input_ids)
        values = self.value_embed(input_ids) if self.cfg.value_embed_dim else None
        # U-Net over the running depth: the first half's outputs feed the second half, innermost first.
        x, lanes, skips = x0, None, []
        for step in self.steps:
            skip, skip_weight, skip_gate = None, None, None
            if step.skip_in >= 0:
                skip, skip_weight = skips.pop(), self.skip_weights[step.skip_in]
                skip_gate = self.skip_gates[step.skip_in] if self.cfg.skip_gates else None
            value_extra = values * self.value_embed.scales[step.value_embed] if step.value_embed >= 0 else None
            attn = self.attns[str(step.block)] if step.attention else None
            norm_scale = self.ln_scales[step.depth] if self.cfg.ln_scale else None
            rest = (skip_weight, skip_gate, self.depth_signal(step.position), value_extra, attn, self.mlps[step.mlp],
                    self.layers[step.position], norm_scale, step.xsa, self.compute_dtype)
            if step.parallel:
                lanes = lanes or (x, x)  # before the first parallel layer both lanes are the single stream
                skip0, skip1 = skip if isinstance(skip, tuple) else (skip, skip)
                lanes = parallel_fn(*lanes, x0, skip0, skip1, *rest)
            else:
                x = layer_fn(x, x0, skip, *rest)
            if step.skip_out:
                skips.append(lanes if step.parallel else x)
            if trace is not None:
                trace.append(x if lanes is None else (lanes[0] + lanes[1]) * 0.5)
        return rms_norm(x if lanes is None else (lanes[0] + lanes[1]) * 0.5)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Soft-capped logits, (B, T, vocab), in float32."""
        h = self.hidden(input_ids).to(self.compute_dtype)
        return softcapped_logits(h, self.tok_emb.weight, self.cfg.logit_softcap)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy in nats (mean, or per token with reduction='none')."""
        h = self.hidden(input_ids).to(self.compute_dtype)
        return self._functions()[2](h, self.tok_emb.weight, targets, self.cfg.logit_softcap, reduction)
