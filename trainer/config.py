"""Typed run configuration: frozen dataclasses, loaded from YAML/TOML and validated once here."""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config value or file is wrong; the message names the key and the fix."""


UNTIE_MLP_POLICIES = ("none", "full")
ATTENTION_CHOICES = ("auto", "flash", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient")
COMPILE_SCOPES = ("layers", "model")
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


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batch and budget settings."""

    seq_len: int = 1024
    batch_tokens: int = 524_288
    # Most tokens one rank runs forward at once (an upper bound; H100 calls 8/9: 131,072 ran 4% faster than 65,536).
    micro_batch_tokens: int = 131_072
    max_steps: int = 20_000
    budget_s: float = 600.0
    warmdown_steps: int = 1200
    compile_warmup_steps: int = 5  # steps run (then rewound) to compile and warm the kernels
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    embed_lr: float = 0.05
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_backend_steps: int = 5
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0
    seed: int = 1337
    compile: bool = True
    # "model": the whole forward as one graph. "layers": regional compilation, one graph per virtual-layer
    # variant shared by every block. On an H100 (call 11) layers compiled in 7.3 s warm instead of ~14 s but
    # stepped 11-13% slower (306 vs 270 ms for 9x512), a bad trade for any trial longer than a minute.
    compile_scope: str = "model"
    compile_optimizer: bool = True  # torch.compile the Muon Newton-Schulz iteration on CUDA
    compile_eval: bool = False  # evaluate with the compiled model (pays a second compile for the eval graph)
    attention: str = "auto"  # one of trainer.attention.ATTENTION_CHOICES
    # Residual stream dtype on the GPU; blocks compute in bf16 either way. bfloat16 saves memory traffic and
    # matched float32's val_bpb at equal steps on an H100 (1.3930 vs 1.3946 at 490 steps; BENCHMARKS.md).
    residual_dtype: str = "bfloat16"
    report_every_s: float = 0.0  # 0: no periodic intermediate reports
    # Training seconds of extra one-off reports (a search's ASHA rungs); a report happens at the next time of
    # either schedule, so each report costs an evaluation and a checkpoint only where someone reads it.
    report_at_s: tuple[float, ...] = ()
    val_prefix_tokens: int = 262_144  # val tokens scored for intermediate reports
    # Score each report on the weights after the artifact's quantization round trip, so ASHA ranks what the
    # export will score (call 14: rungs vs final val_bpb +0.48 at 5 s, vs the pre-quant final +0.95: the export
    # reordered the int5 trials). The pre-quant value is reported too, as val_bpb_prequant.
    rung_roundtrip: bool = False
    # Score each report after a short learning-rate cooldown, then rewind it: this many of the steps trained so
    # far, LR decaying linearly to 0 from where it is. A rung mid-schedule ranks configs before their decay, which
    # the final val_bpb comes after (calls 63 and 72: at 180 s a 60 s rung ranked at Spearman +0.19, n = 10), so
    # this probes what each would score if it stopped there. The cooldown is evaluation time, never budget.
    rung_cooldown_fraction: float = 0.0
    val_batch_tokens: int = 524_288
    final_val_tokens: int = 0  # 0: score the whole val split at the end (the challenge's figure)
    log_every_steps: int = 50

    def validate(self) -> None:
        """Raise ConfigError on inconsistent batch or budget settings."""
        _require(self.seq_len > 0, "train.seq_len", "must be positive")
        _require(
            self.micro_batch_tokens % self.seq_len == 0,
            "train.micro_batch_tokens",
            f"{self.micro_batch_tokens} is not a multiple of seq_len={self.seq_len}",
        )
        _require(
            self.batch_tokens % self.micro_batch_tokens == 0,
            "train.batch_tokens",
            f"{self.batch_tokens} is not a multiple of micro_batch_tokens={self.micro_batch_tokens}",
        )
        _require(self.budget_s > 0, "train.budget_s", "must be positive seconds")
        _require(self.max_steps > 0, "train.max_steps", "must be positive")
        _require(self.val_prefix_tokens >= self.seq_len, "train.val_prefix_tokens", "must hold one sequence")
        _require(self.report_every_s >= 0, "train.report_every_s", "must be 0 (none) or positive seconds")
        _require(0.0 <= self.rung_cooldown_fraction <= 0.5, "train.rung_cooldown_fraction",
                 f"{self.rung_cooldown_fraction} must be 0 (off) to 0.5 (a cooldown of half the steps trained)")
        _require(
            all(t > 0 for t in self.report_at_s)
            and all(a < b for a, b in zip(self.report_at_s, self.report_at_s[1:])),
            "train.report_at_s",
            f"{list(self.report_at_s)} must be positive seconds in increasing order",
        )
        _require(
            self.residual_dtype in ("float32", "bfloat16"),
            "train.residual_dtype",
            f"'{self.residual_dtype}' must be float32 or bfloat16",
        )
        _require(
            self.compile_scope in COMPILE_SCOPES,
            "train.compile_scope",
            f"'{self.compile_scope}' is not one of {COMPILE_SCOPES}",
        )
        _require(
            self.attention in ATTENTION_CHOICES,
            "train.attention",
            f"'{self.attention}' is not one of {ATTENTION_CHOICES}",
        )

    def next_report_s(self, train_s: float) -> float | None:
        """The first report time after train_s on either schedule (report_at_s, multiples of report_every_s)."""
        times = [t for t in self.report_at_s if t > train_s]
        if self.report_every_s > 0:
            times.append((math.floor(train_s / self.report_every_s) + 1) * self.report_every_s)
        return min(times, default=None)

    def split_batch(self, world_size: int) -> tuple[int, int]:
        """(tokens per micro-batch on one rank, micro-batches per step) for a step of batch_tokens over world_size ranks.

        micro_batch_tokens is an upper bound: on many ranks each rank's share of the batch may be smaller.
        """
        local = min(self.micro_batch_tokens, self.batch_tokens // world_size)
        accum = self.batch_tokens // max(local * world_size, 1)
        if local < self.seq_len or local % self.seq_len or accum * local * world_size != self.batch_tokens:
            raise ConfigError(
                f"train.batch_tokens: {self.batch_tokens} does not split into {world_size} ranks x whole "
                f"micro-batches of at most micro_batch_tokens={self.micro_batch_tokens} in multiples of "
                f"seq_len={self.seq_len}; make batch_tokens a multiple of seq_len x ranks x micro-batches"
            )
        return local, accum


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


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.train.validate()
        self.export.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists) that from_dict reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def smoke_version(cfg: RunConfig) -> RunConfig:
    """Same model, tiny training: a few CPU steps on short sequences and a val prefix."""
    seq = min(cfg.train.seq_len, 64)
    train = dataclasses.replace(
        cfg.train,
        seq_len=seq,
        micro_batch_tokens=4 * seq,
        batch_tokens=4 * seq,
        max_steps=min(cfg.train.max_steps, 8),
        budget_s=min(cfg.train.budget_s, 20.0),
        warmdown_steps=min(cfg.train.warmdown_steps, 4),
        compile_warmup_steps=0,
        compile=False,
        val_prefix_tokens=8 * seq,
        val_batch_tokens=8 * seq,
        final_val_tokens=16 * seq + 1,
        log_every_steps=1,
    )
    return dataclasses.replace(cfg, train=train).validate()


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "export": ExportConfig}


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


def _build_section(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Build and validate a RunConfig from a nested dict with sections model/train/export."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with sections {sorted(SECTIONS)}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; valid sections are {sorted(SECTIONS)}")
    parts = {}
    for name, cls in SECTIONS.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: section '{name}' must be a mapping")
        parts[name] = _build_section(cls, section, f"{where}:{name}")
    cfg = RunConfig(**parts)
    try:
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def read_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML or TOML file into a dict, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass an existing .yaml or .toml path")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    return data or {}


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split 'section.key=value' into a key path and a YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. model.unique_blocks=3")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2:
        raise ConfigError(f"--set {item!r}: key must be section.key, e.g. train.budget_s=180")
    return path, yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of data with each 'section.key=value' applied."""
    merged = {k: dict(v or {}) for k, v in data.items()}
    for item in overrides:
        (section, key), value = parse_override(item)
        merged.setdefault(section, {})[key] = value
    return merged


def load(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a config file (or defaults), apply --set overrides, validate."""
    data = read_mapping(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(data, where=str(path) if path else "config")
