"""What an artifact carries: the model's shape and recurrence schedule, and how it was exported.

Frozen dataclasses validated once; the typed section parser here also serves the run config.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config value or file is wrong; the message names the key and the fix."""


UNTIE_MLP_POLICIES = ("none", "full")
DEPTH_SIGNALS = ("none", "learned", "sinusoidal")
ACTIVATIONS = ("relu2", "leaky_relu2")
# How the non-zero block matrices (q, k, v, MLP fc) start; output projections start at zero either way.
WEIGHT_INITS = ("normal", "uniform")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the GPT and its recurrence schedule."""

    vocab_size: int = 1024
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0
    unique_blocks: int = 9
    # Order in which physical blocks run; empty means each block once, in order.
    virtual_layers: tuple[int, ...] = ()
    # "none": a repeat reuses the whole block; "full": every repeat gets its own MLP;
    # a tuple: those virtual positions get their own MLP.
    untie_mlp: Union[str, tuple[int, ...]] = "none"
    depth_signal: str = "none"
    activation: str = "relu2"
    unet_skips: bool = True
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    tied_embed_init_std: float = 0.005
    # "normal": Gaussian with nn.Linear's default std, 1/sqrt(3 fan_in); "uniform": nn.Linear's own
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Same training (CPU check: equal losses to 160 steps), but uniform
    # codes are incompressible until training has moved the weights, so a briefly trained uniform model
    # compresses 3-8% worse than a long-trained one; Gaussian codes start near where training ends, which
    # is what lets the size model predict the artifact before training (issue #3).
    weight_init: str = "normal"

    @property
    def schedule_order(self) -> tuple[int, ...]:
        """Block index per virtual layer (the explicit list, or each block once)."""
        return self.virtual_layers or tuple(range(self.unique_blocks))

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_mult * self.model_dim))

    def validate(self) -> None:
        """Raise ConfigError on an impossible shape or schedule."""
        _require(self.vocab_size > 0, "model.vocab_size", "must be positive")
        _require(self.unique_blocks > 0, "model.unique_blocks", "must be at least 1")
        _require(
            self.model_dim % self.num_heads == 0,
            "model.model_dim",
            f"{self.model_dim} is not divisible by num_heads={self.num_heads}; pick a multiple",
        )
        _require(
            self.num_heads % self.num_kv_heads == 0,
            "model.num_kv_heads",
            f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}",
        )
        _require(self.head_dim % 2 == 0, "model.model_dim", "head_dim must be even for RoPE")
        _require(self.mlp_hidden > 0, "model.mlp_mult", "must give a positive hidden width")
        order = self.schedule_order
        bad = [b for b in order if not 0 <= b < self.unique_blocks]
        _require(
            not bad,
            "model.virtual_layers",
            f"refers to blocks {bad} but unique_blocks={self.unique_blocks} (valid: 0..{self.unique_blocks - 1})",
        )
        unused = sorted(set(range(self.unique_blocks)) - set(order))
        _require(not unused, "model.virtual_layers", f"never runs blocks {unused}; drop them or use them")
        if isinstance(self.untie_mlp, str):
            _require(
                self.untie_mlp in UNTIE_MLP_POLICIES,
                "model.untie_mlp",
                f"'{self.untie_mlp}' is not one of {UNTIE_MLP_POLICIES} or a list of virtual positions",
            )
        else:
            bad_pos = [p for p in self.untie_mlp if not 0 <= p < len(order)]
            _require(
                not bad_pos,
                "model.untie_mlp",
                f"positions {bad_pos} are outside 0..{len(order) - 1} (there are {len(order)} virtual layers)",
            )
        _require(self.depth_signal in DEPTH_SIGNALS, "model.depth_signal", f"must be one of {DEPTH_SIGNALS}")
        _require(self.activation in ACTIVATIONS, "model.activation", f"must be one of {ACTIVATIONS}")
        _require(self.weight_init in WEIGHT_INITS, "model.weight_init", f"must be one of {WEIGHT_INITS}")


# The export widths the artifact supports: integer grids for the block matrices, and for the embedding also 0 (the
# matrices' bits) and 16 (kept float16). The size model and the search spaces offer these same sets.
QUANT_BITS = (5, 6, 8)
EMBEDDING_BITS = (0, 5, 6, 8, 16)


@dataclass(frozen=True)
class ExportConfig:
    """How the trained weights become the size-limited artifact."""

    quant_bits: int = 8
    # The tied embedding is also the output head, so its rounding error reaches every logit: records keep it
    # wider than the block matrices. 0: same as quant_bits; 16: kept float16.
    embedding_bits: int = 0
    clip_quantile: float = 0.99999
    keep_float_max_numel: int = 65_536
    zstd_level: int = 22
    limit_bytes: int = 16_000_000

    def validate(self) -> None:
        """Raise ConfigError on unsupported quantization settings."""
        _require(self.quant_bits in QUANT_BITS, "export.quant_bits", "must be 5, 6 or 8")
        _require(self.embedding_bits in EMBEDDING_BITS, "export.embedding_bits",
                 "must be 5, 6, 8, 16 (float16) or 0 (same as quant_bits)")
        _require(0.5 < self.clip_quantile <= 1.0, "export.clip_quantile", "must be in (0.5, 1]")
        _require(1 <= self.zstd_level <= 22, "export.zstd_level", "must be 1..22")
        _require(self.limit_bytes > 0, "export.limit_bytes", "must be a positive byte count")


@dataclass(frozen=True)
class ArtifactConfig:
    """The config sections an artifact stores: enough to rebuild and run the model."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/TOML/CLI value to the annotated type, or raise naming the key."""
    origin = get_origin(hint)
    if origin is Union:
        errors = []
        for option in get_args(hint):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} fits none of the allowed types ({'; '.join(errors)})")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, _ellipsis) = get_args(hint)
        return tuple(_coerce(v, item_type, key) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def artifact_config_from_dict(data: dict[str, Any], where: str) -> ArtifactConfig:
    """Build and validate the model and export sections of an artifact header."""
    try:
        model = build_section(ModelConfig, data.get("model") or {}, f"{where}:model")
        export = build_section(ExportConfig, data.get("export") or {}, f"{where}:export")
        model.validate()
        export.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return ArtifactConfig(model, export)
