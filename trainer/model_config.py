"""What an artifact carries: the model's shape and recurrence schedule, and how it was exported.

Frozen dataclasses validated once; the typed section parser here also serves the run config.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, fields
from typing import Any, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config value or file is wrong; the message names the key and the fix."""


UNTIE_MLP_POLICIES = ("none", "full")
DEPTH_SIGNALS = ("none", "learned", "sinusoidal")
ACTIVATIONS = ("relu2", "leaky_relu2")
# How the non-zero block matrices (q, k, v, MLP fc) start; output projections start at zero either way.
WEIGHT_INITS = ("normal", "uniform", "orthogonal")
# Stored in an artifact header only where set, so a model without them keeps the header (and size) it had before.
TECHNIQUE_FIELDS = ("rope_dims", "ln_scale", "xsa_last", "bigram_buckets", "bigram_dim", "value_embed_dim",
                    "value_embed_layers", "attention_off_blocks", "parallel_from_block", "skip_gates", "smear")


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
    # "orthogonal": gain 1, entry std 1/sqrt(max(rows, cols)).
    weight_init: str = "normal"
    # Techniques, off by default. Depth: index in the schedule that runs (GPT.set_recurrence).
    rope_dims: int = 0  # rotary on the first rope_dims dims of each head; 0: all
    ln_scale: bool = False  # per virtual layer: block inputs x 1/sqrt(depth + 1)
    # Per virtual layer: XSA (head output minus its part along its own value) on the last xsa_last configured depths.
    xsa_last: int = 0
    # Per model: a table over hashed (previous, token) pairs, added to the token embedding; 0: off.
    bigram_buckets: int = 0
    bigram_dim: int = 128
    # Per virtual layer: a token table projected to the KV width, added to v at these depths x a scale each.
    value_embed_dim: int = 0
    value_embed_layers: tuple[int, ...] = ()
    attention_off_blocks: tuple[int, ...] = ()  # per physical block: no attention, the MLP only
    # Per physical block: layers of blocks >= this run two residual lanes (weights per virtual layer); -1: off.
    parallel_from_block: int = -1
    skip_gates: bool = False  # U-Net skips as lerp(w * skip, x, sigmoid(g))
    smear: bool = False  # per model: x <- lerp(x, x_prev, sigmoid(g)) after the embedding norm

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

    def header_fields(self) -> dict[str, Any]:
        """The fields as an artifact header stores them (JSON values): TECHNIQUE_FIELDS only where not default."""
        values, default = (json.loads(json.dumps(dataclasses.asdict(c))) for c in (self, ModelConfig()))
        return {k: v for k, v in values.items() if k not in TECHNIQUE_FIELDS or v != default[k]}

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
        self._validate_techniques()

    def _validate_techniques(self) -> None:
        order, depth, blocks = self.schedule_order, len(self.schedule_order), self.unique_blocks
        _require(0 <= self.rope_dims <= self.head_dim and self.rope_dims % 2 == 0, "model.rope_dims",
                 f"{self.rope_dims} must be an even number of dims in 0..head_dim={self.head_dim} (0: all)")
        _require(0 <= self.xsa_last <= depth, "model.xsa_last", f"must be 0 (off) to {depth}, the virtual layers")
        _require(self.bigram_buckets == 0 or self.bigram_buckets >= 2, "model.bigram_buckets",
                 "needs at least 2 buckets (bucket 0 is the first position's); 0 turns it off")
        _require(self.bigram_dim > 0, "model.bigram_dim", "must be positive")
        ve = self.value_embed_layers
        _require(self.value_embed_dim >= 0 and bool(self.value_embed_dim) == bool(ve), "model.value_embed_dim",
                 f"{self.value_embed_dim} with value_embed_layers {list(ve)}: set both (e.g. 128, [9, 10]) or neither")
        _require(all(0 <= p < depth for p in ve) and len(set(ve)) == len(ve), "model.value_embed_layers",
                 f"{list(ve)} must be distinct depths in 0..{depth - 1}")
        off = self.attention_off_blocks
        _require(all(0 <= b < blocks for b in off) and len(set(off)) == len(off), "model.attention_off_blocks",
                 f"{list(off)} must be distinct blocks in 0..{blocks - 1}")
        k = self.parallel_from_block
        _require(-1 <= k < blocks, "model.parallel_from_block", f"{k} must be -1 (off) or a block in 0..{blocks - 1}")
        first = next((p for p, b in enumerate(order) if 0 <= k <= b), depth)
        late = [p for p in range(first, depth) if order[p] < k]
        _require(not late, "model.parallel_from_block", f"the two lanes cannot merge back: positions {late} run "
                 f"blocks below {k} after position {first}; raise it or reorder virtual_layers")
        _require(not self.skip_gates or self.unet_skips, "model.skip_gates", "gates U-Net skips: needs unet_skips: true")


# The export widths the artifact supports: integer grids for the block matrices, and for the embedding also 0 (the
# matrices' bits) and 16 (kept float16). The size model and the search spaces offer these same sets.
QUANT_BITS = (5, 6, 8)
EMBEDDING_BITS = (0, 5, 6, 8, 16)
COMPRESSORS = ("zstd", "brotli", "lzma", "best")
GPTQ_CALIBRATIONS = ("train", "generated")
UPGRADE_FITS = ("predicted", "measured")


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
    # GPTQ rounding of the block matrices, with H from calibration batches of train.seq_len sequences:
    # training tokens ("train") or text the model samples itself ("generated").
    gptq: bool = False
    gptq_calibration: str = "train"
    gptq_calibration_batches: int = 16
    gptq_calibration_batch_tokens: int = 16_384
    gptq_temperature: float = 0.8
    gptq_damp: float = 0.01  # added to H's diagonal, times its mean
    gptq_block_size: int = 128
    # Mixed widths: the most sensitive block matrices go from quant_bits to upgrade_bits (0 or not wider: off)
    # while the size model predicts a fit; "fill": as many as fit, a number: at most that many.
    upgrade_bits: int = 0
    upgrade: Union[int, str] = "fill"
    upgrade_fit: str = "predicted"  # or "measured": compress up to 3 allocations, keep the largest under the limit
    compressor: str = "zstd"  # "best": the smallest of zstd, brotli and lzma
    byte_shuffle: bool = False  # store the fp16 bytes as two planes (low bytes, high bytes)

    def validate(self) -> None:
        """Raise ConfigError on unsupported quantization settings."""
        _require(self.quant_bits in QUANT_BITS, "export.quant_bits", "must be 5, 6 or 8")
        _require(self.embedding_bits in EMBEDDING_BITS, "export.embedding_bits",
                 "must be 5, 6, 8, 16 (float16) or 0 (same as quant_bits)")
        _require(0.5 < self.clip_quantile <= 1.0, "export.clip_quantile", "must be in (0.5, 1]")
        _require(1 <= self.zstd_level <= 22, "export.zstd_level", "must be 1..22")
        _require(self.gptq_calibration in GPTQ_CALIBRATIONS, "export.gptq_calibration",
                 f"must be one of {GPTQ_CALIBRATIONS}")
        _require(self.gptq_calibration_batches >= 1, "export.gptq_calibration_batches", "must be at least 1")
        _require(self.gptq_calibration_batch_tokens >= 1, "export.gptq_calibration_batch_tokens", "must be positive")
        _require(self.gptq_temperature > 0, "export.gptq_temperature", "must be positive")
        _require(0 <= self.gptq_damp < 1, "export.gptq_damp", "must be in [0, 1) (0.01 is usual)")
        _require(self.gptq_block_size >= 1, "export.gptq_block_size", "must be at least 1")
        _require(self.upgrade_bits in (0, *QUANT_BITS), "export.upgrade_bits", "must be 0 (off), 5, 6 or 8")
        _require(self.upgrade == "fill" or (isinstance(self.upgrade, int) and self.upgrade >= 0), "export.upgrade",
                 f"must be fill or a number of matrices, not {self.upgrade!r}")
        _require(self.upgrade_fit in UPGRADE_FITS, "export.upgrade_fit", f"must be one of {UPGRADE_FITS}")
        _require(self.compressor in COMPRESSORS, "export.compressor", f"must be one of {COMPRESSORS}")
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


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """A config class's field types (evaluating annotations is slow: once per class)."""
    return get_type_hints(cls)


def build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = type_hints(cls)
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
