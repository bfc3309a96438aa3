"""Typed run configuration: the model and export sections plus training settings, from YAML/TOML and --set."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.attention import ATTENTION_CHOICES
from trainer.model_config import (  # noqa: F401  (ConfigError and the sections are part of this module's API)
    ACTIVATIONS, DEPTH_SIGNALS, EMBEDDING_BITS, QUANT_BITS, UNTIE_MLP_POLICIES,
    WEIGHT_INITS, ArtifactConfig, ConfigError, ExportConfig, ModelConfig, _require, build_section,
)

COMPILE_SCOPES = ("layers", "model")
AVERAGES = ("none", "ema", "swa")
DATA_ORDERS = ("stream", "shuffled")
# --smoke runs 8 steps with a 4-step warmdown (LR scales 1, 0.75, 0.5, 0.25 at the end): late techniques that
# start below an LR scale start below this one instead, so the last two smoke steps exercise them.
SMOKE_LATE_LR_SCALE = 0.6


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batch and budget settings."""

    seq_len: int = 1024
    batch_tokens: int = 524_288
    # Most tokens one rank runs forward at once (an upper bound; on an H100 131,072 ran 4% faster than 65,536,
    # BENCHMARKS.md, "Step time against the challenge's trainer").
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
    # variant shared by every block. On an H100 layers compiled in 7.3 s warm instead of ~14 s but stepped 11-13%
    # slower (306 vs 270 ms for 9x512), a bad trade for any trial longer than a minute (BENCHMARKS.md
    # "Compile time and scope").
    compile_scope: str = "model"
    compile_optimizer: bool = True  # torch.compile the Muon Newton-Schulz iteration on CUDA
    compile_eval: bool = False  # evaluate with the compiled model (pays a second compile for the eval graph)
    attention: str = "auto"  # one of trainer.attention.ATTENTION_CHOICES
    # Residual stream dtype on the GPU; blocks compute in bf16 either way. bfloat16 saves memory traffic and
    # matched float32's val_bpb at equal steps on an H100 (1.3930 vs 1.3946 at 490 steps; BENCHMARKS.md).
    residual_dtype: str = "bfloat16"
    val_prefix_tokens: int = 262_144  # val tokens scored for intermediate reports
    val_batch_tokens: int = 524_288
    final_val_tokens: int = 0  # 0: score the whole val split at the end (the challenge's figure)
    log_every_steps: int = 50
    # The record's recipe (trainer/averaging.py, qat.py, recurrence.py, evaluate.py; optim.py for weight decay).
    # Weight averaging for the final evaluation and the export: "ema" (every step, float32) or "swa" (the mean
    # of snapshots every swa_every_steps steps once the step's LR scale is below swa_start_lr_scale).
    average: str = "none"
    ema_decay: float = 0.997
    swa_every_steps: int = 50
    swa_start_lr_scale: float = 0.2
    # Start the average over at the step delayed recurrence switches on (train.recurrence_start_fraction).
    average_restart_at_recurrence: bool = False
    # Decoupled weight decay, p <- p * (1 - lr * wd) before each update; Adam becomes AdamW when set.
    muon_weight_decay: float = 0.0
    adam_weight_decay: float = 0.0
    # Late QAT: block matrices run forward on their late_qat_bits per-row grid (straight-through gradient) from
    # the first step whose LR scale is below late_qat_lr_scale (0: off).
    late_qat_lr_scale: float = 0.0
    late_qat_bits: int = 6
    # Delayed recurrence: the schedule runs without its repeats until this fraction of training,
    # max(step / max_steps, train_s / budget_s) (0: repeats from the start).
    recurrence_start_fraction: float = 0.0
    # Sliding-window evaluation after the round trip: windows of seq_len every eval_stride tokens (0: off).
    eval_stride: int = 0
    # Training tokens in shard order ("stream"), or as seq_len windows in a seeded random order over all shards,
    # each once per pass ("shuffled", trainer/data/sampler.py).
    data_order: str = "stream"

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
        _require(self.average in AVERAGES, "train.average", f"'{self.average}' is not one of {AVERAGES}")
        _require(self.data_order in DATA_ORDERS, "train.data_order", f"'{self.data_order}' is not one of {DATA_ORDERS}")
        _require(0 < self.ema_decay < 1, "train.ema_decay", f"{self.ema_decay} must be in (0, 1), e.g. 0.997")
        _require(self.swa_every_steps >= 1, "train.swa_every_steps", "must be at least 1")
        _require(0 < self.swa_start_lr_scale <= 1, "train.swa_start_lr_scale", "must be in (0, 1], e.g. 0.2")
        for key in ("muon_weight_decay", "adam_weight_decay"):
            value = getattr(self, key)
            _require(0 <= value < 1, f"train.{key}", f"{value} must be in [0, 1) (0: off; the record: 0.04)")
        _require(0 <= self.late_qat_lr_scale <= 1, "train.late_qat_lr_scale",
                 f"{self.late_qat_lr_scale} must be in [0, 1] (0: off; the record: 0.15)")
        _require(self.late_qat_bits in QUANT_BITS, "train.late_qat_bits", f"{self.late_qat_bits} must be one of "
                 f"{QUANT_BITS} (the export's integer grids)")
        _require(0 <= self.recurrence_start_fraction < 1, "train.recurrence_start_fraction",
                 f"{self.recurrence_start_fraction} must be in [0, 1) (0: repeats from the start; the record: 0.48)")
        if self.average_restart_at_recurrence:
            _require(self.average != "none" and self.recurrence_start_fraction > 0,
                     "train.average_restart_at_recurrence",
                     "needs train.average (ema or swa) and train.recurrence_start_fraction > 0: set them, or drop it")
        _require(0 <= self.eval_stride <= self.seq_len, "train.eval_stride",
                 f"{self.eval_stride} must be 0 (off) or a stride in 1..seq_len={self.seq_len}")

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
    """Same model, tiny training: a few CPU steps on short sequences and a val prefix.

    The record's techniques stay on and switch within the 8 steps: recurrence at its fraction of them, late QAT
    and SWA below SMOKE_LATE_LR_SCALE, a sliding stride of a quarter sequence; GPTQ calibrates on 2 short batches.
    """
    seq = min(cfg.train.seq_len, 64)
    tc = cfg.train
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
        late_qat_lr_scale=max(tc.late_qat_lr_scale, SMOKE_LATE_LR_SCALE) if tc.late_qat_lr_scale else 0.0,
        swa_every_steps=min(tc.swa_every_steps, 2),
        swa_start_lr_scale=max(tc.swa_start_lr_scale, SMOKE_LATE_LR_SCALE),
        eval_stride=min(tc.eval_stride, max(seq // 4, 1)),
    )
    export = cfg.export
    if export.gptq:
        export = dataclasses.replace(export, gptq_calibration_batches=min(export.gptq_calibration_batches, 2),
                                     gptq_calibration_batch_tokens=min(export.gptq_calibration_batch_tokens, 4 * seq))
    return dataclasses.replace(cfg, train=train, export=export).validate()


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "export": ExportConfig}
# Train keys that configs recorded before they became settings of whoever asks for intermediate reports (the
# search: its report times and how it scores a report). They never changed what training does, so a config
# that holds them (a run's metrics.json, a saved rerun config) reads without them.
RETIRED_TRAIN_KEYS = ("report_every_s", "report_at_s", "rung_roundtrip", "rung_cooldown_fraction")


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
        if name == "train":
            section = {k: v for k, v in section.items() if k not in RETIRED_TRAIN_KEYS}
        parts[name] = build_section(cls, section, f"{where}:{name}")
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
