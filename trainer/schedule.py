"""The recurrence schedule as data: which physical weights each virtual layer runs, and every tensor the model holds."""
from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.model_config import ModelConfig


@dataclass(frozen=True)
class VirtualLayer:
    """One step of depth: run attention `attn` and MLP `mlp` with this position's own scalars."""

    position: int
    block: int
    mlp: int


@dataclass(frozen=True)
class LayerStep:
    """A virtual layer as it runs: its depth in the running schedule and what happens there."""

    position: int  # in the configured schedule: whose scalars (layers.{position}) it uses
    block: int
    mlp: int
    depth: int  # in the schedule that runs: ln_scale, XSA, value embeddings and U-Net skips follow it
    attention: bool
    xsa: bool
    parallel: bool
    value_embed: int  # index into value_embed_layers, -1: none
    skip_in: int  # U-Net skip weight taken before the layer, -1: none
    skip_out: bool  # the output is kept as a skip


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor: its state_dict name, shape and role (matrix, embedding or scalar)."""

    name: str
    shape: tuple[int, ...]
    role: str
    starts_at_zero: bool = False  # output projections (each layer starts as the identity), the bigram table

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def untied_positions(cfg: ModelConfig) -> frozenset[int]:
    """Virtual positions that get an MLP of their own instead of their block's."""
    order = cfg.schedule_order
    if cfg.untie_mlp == "none":
        return frozenset()
    if cfg.untie_mlp == "full":
        return frozenset(range(len(order)))
    return frozenset(cfg.untie_mlp)


def build_schedule(cfg: ModelConfig) -> list[VirtualLayer]:
    """Expand the config into virtual layers; MLPs 0..unique_blocks-1 belong to blocks, extras follow."""
    order = cfg.schedule_order
    untied = untied_positions(cfg)
    # A block's own MLP is used by its occurrences that are not untied; if all are untied,
    # the first one takes it so that no stored MLP goes unused.
    owner_taken = {b: any(p not in untied for p, ob in enumerate(order) if ob == b) for b in set(order)}
    next_extra = cfg.unique_blocks
    layers = []
    for position, block in enumerate(order):
        if position in untied and owner_taken[block]:
            mlp = next_extra
            next_extra += 1
        else:
            mlp = block
            if position in untied:
                owner_taken[block] = True
        layers.append(VirtualLayer(position=position, block=block, mlp=mlp))
    return layers


def repeat_positions(cfg: ModelConfig) -> frozenset[int]:
    """Virtual positions whose block already ran at an earlier position."""
    order = cfg.schedule_order
    return frozenset(p for p, block in enumerate(order) if block in order[:p])


def runs_parallel(cfg: ModelConfig, block: int) -> bool:
    """Whether the block's virtual layers run two residual lanes."""
    return 0 <= cfg.parallel_from_block <= block


def active_schedule(cfg: ModelConfig, recurrence_on: bool = True) -> list[LayerStep]:
    """The layers that run, in order: the configured schedule, or without its repeats when recurrence is off."""
    skipped = frozenset() if recurrence_on else repeat_positions(cfg)
    layers = [layer for layer in build_schedule(cfg) if layer.position not in skipped]
    encoder = skips_at_depth(cfg, len(layers))
    xsa_from = len(cfg.schedule_order) - cfg.xsa_last if cfg.xsa_last else math.inf
    steps = []
    for depth, layer in enumerate(layers):
        attention = layer.block not in cfg.attention_off_blocks
        steps.append(LayerStep(
            position=layer.position, block=layer.block, mlp=layer.mlp, depth=depth, attention=attention,
            xsa=attention and depth >= xsa_from,
            parallel=runs_parallel(cfg, layer.block),
            value_embed=cfg.value_embed_layers.index(depth) if depth in cfg.value_embed_layers else -1,
            skip_in=depth - encoder if encoder <= depth < 2 * encoder else -1,
            skip_out=depth < encoder,
        ))
    return steps


def num_mlps(cfg: ModelConfig) -> int:
    """How many distinct MLPs are stored."""
    return 1 + max(layer.mlp for layer in build_schedule(cfg))


def skips_at_depth(cfg: ModelConfig, depth: int) -> int:
    """U-Net skips of a stack this deep: they pair its first half with its second half."""
    return min(depth // 2, depth - depth // 2) if cfg.unet_skips else 0


def num_skip_weights(cfg: ModelConfig) -> int:
    """Skip weights stored: as many as the configured schedule uses (a shorter running one uses the first)."""
    return skips_at_depth(cfg, len(cfg.schedule_order))


def tensor_layout(cfg: ModelConfig) -> list[TensorSpec]:
    """Every tensor in the model's state_dict, with its exact shape; shared weights appear once."""
    d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    depth = len(cfg.schedule_order)
    specs = [TensorSpec("tok_emb.weight", (cfg.vocab_size, d), "embedding")]
    for b in range(cfg.unique_blocks):
        if b in cfg.attention_off_blocks:
            continue
        specs += [
            TensorSpec(f"attns.{b}.c_q.weight", (d, d), "matrix"),
            TensorSpec(f"attns.{b}.c_k.weight", (kv, d), "matrix"),
            TensorSpec(f"attns.{b}.c_v.weight", (kv, d), "matrix"),
            TensorSpec(f"attns.{b}.proj.weight", (d, d), "matrix", starts_at_zero=True),
        ]
    for m in range(num_mlps(cfg)):
        specs += [
            TensorSpec(f"mlps.{m}.fc.weight", (cfg.mlp_hidden, d), "matrix"),
            TensorSpec(f"mlps.{m}.proj.weight", (d, cfg.mlp_hidden), "matrix", starts_at_zero=True),
        ]
    for i, block in enumerate(cfg.schedule_order):
        attention = block not in cfg.attention_off_blocks
        specs += [TensorSpec(f"layers.{i}.attn_scale", (d,), "scalar")] if attention else []
        specs += [TensorSpec(f"layers.{i}.mlp_scale", (d,), "scalar"), TensorSpec(f"layers.{i}.resid_mix", (2, d), "scalar")]
        specs += [TensorSpec(f"layers.{i}.q_gain", (cfg.num_heads,), "scalar")] if attention else []
        if runs_parallel(cfg, block):
            sublayers = 2 if attention else 1
            specs += [TensorSpec(f"layers.{i}.lane_post", (sublayers, 2), "scalar"),
                      TensorSpec(f"layers.{i}.lane_resid", (sublayers,), "scalar")]
    if cfg.depth_signal == "learned":
        specs.append(TensorSpec("depth_embed", (depth, d), "scalar"))
    if cfg.depth_signal == "sinusoidal":
        specs.append(TensorSpec("depth_gain", (depth,), "scalar"))
    if num_skip_weights(cfg):
        specs.append(TensorSpec("skip_weights", (num_skip_weights(cfg), d), "scalar"))
    if num_skip_weights(cfg) and cfg.skip_gates:
        specs.append(TensorSpec("skip_gates", (num_skip_weights(cfg), d), "scalar"))
    if cfg.smear:
        specs.append(TensorSpec("smear_gate", (d,), "scalar"))
    if cfg.bigram_buckets:
        specs += [
            TensorSpec("bigram.table.weight", (cfg.bigram_buckets, cfg.bigram_dim), "embedding", starts_at_zero=True),
            TensorSpec("bigram.proj.weight", (d, cfg.bigram_dim), "matrix"),
            TensorSpec("bigram.scale", (1,), "scalar"),
        ]
    if cfg.value_embed_dim:
        specs += [
            TensorSpec("value_embed.table.weight", (cfg.vocab_size, cfg.value_embed_dim), "embedding"),
            TensorSpec("value_embed.proj.weight", (kv, cfg.value_embed_dim), "matrix"),
            TensorSpec("value_embed.scales", (len(cfg.value_embed_layers),), "scalar"),
        ]
    return specs


def unique_params(cfg: ModelConfig) -> int:
    """Parameters actually stored (shared blocks counted once)."""
    return sum(spec.numel for spec in tensor_layout(cfg))
