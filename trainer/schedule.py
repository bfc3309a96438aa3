"""The recurrence schedule as data: which physical weights each virtual layer runs, and every tensor the model holds."""
from __future__ import annotations

from dataclasses import dataclass

from trainer.model_config import ModelConfig


@dataclass(frozen=True)
class VirtualLayer:
    """One step of depth: run attention `attn` and MLP `mlp` with this position's own scalars."""

    position: int
    block: int
    mlp: int


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor: its state_dict name, shape and role (matrix, embedding or scalar)."""

    name: str
    shape: tuple[int, ...]
    role: str
    starts_at_zero: bool = False  # output projections: each layer starts as the identity

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


def num_mlps(cfg: ModelConfig) -> int:
    """How many distinct MLPs are stored."""
    return 1 + max(layer.mlp for layer in build_schedule(cfg))


def num_skip_weights(cfg: ModelConfig) -> int:
    """U-Net skips pair the first half of the virtual stack with the second half."""
    if not cfg.unet_skips:
        return 0
    depth = len(cfg.schedule_order)
    return min(depth // 2, depth - depth // 2)


def tensor_layout(cfg: ModelConfig) -> list[TensorSpec]:
    """Every tensor in the model's state_dict, with its exact shape; shared weights appear once."""
    d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    depth = len(cfg.schedule_order)
    specs = [TensorSpec("tok_emb.weight", (cfg.vocab_size, d), "embedding")]
    for b in range(cfg.unique_blocks):
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
    for i in range(depth):
        specs += [
            TensorSpec(f"layers.{i}.attn_scale", (d,), "scalar"),
            TensorSpec(f"layers.{i}.mlp_scale", (d,), "scalar"),
            TensorSpec(f"layers.{i}.resid_mix", (2, d), "scalar"),
            TensorSpec(f"layers.{i}.q_gain", (cfg.num_heads,), "scalar"),
        ]
    if cfg.depth_signal == "learned":
        specs.append(TensorSpec("depth_embed", (depth, d), "scalar"))
    if cfg.depth_signal == "sinusoidal":
        specs.append(TensorSpec("depth_gain", (depth,), "scalar"))
    if num_skip_weights(cfg):
        specs.append(TensorSpec("skip_weights", (num_skip_weights(cfg), d), "scalar"))
    return specs


def unique_params(cfg: ModelConfig) -> int:
    """Parameters actually stored (shared blocks counted once)."""
    return sum(spec.numel for spec in tensor_layout(cfg))
