"""metrics.json: what a finished `trainer train` run records, written and read here alone.

Versions 2 and 3 name themselves (metrics_version). Files without that key are version 1: they read the same, except
the keys the trainer added while version 1 was current (startup_s, wait_s, attention, flops_per_token, mfu), which
are None where such a file lacks them. Version 3 added val_bpb_prequant_raw and the sliding-window figures, None in
older files and in runs without weight averaging or sliding evaluation. Version 4 added upgraded_bits (the tensors
a mixed-width export wrote off their config width, {} for none; None in older files), which the size model's fit
needs to price the file that was measured. A damaged, truncated or foreign file
raises MetricsError naming it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
METRICS_VERSION = 4
# The version each optional key came with: a file of that version or later must hold it.
ADDED_IN = {"startup_s": 2, "wait_s": 2, "attention": 2, "flops_per_token": 2, "mfu": 2,
            "val_bpb_prequant_raw": 3, "val_bpb_sliding": 3, "val_loss_sliding": 3, "upgraded_bits": 4}


class MetricsError(ValueError):
    """A metrics file cannot be read as a run's metrics; the message names the file and the fix."""


@dataclass(frozen=True)
class RunMetrics:
    """One finished run: val_bpb after the artifact's round trip, sizes, throughput, time split, its config."""

    val_bpb: float  # the artifact's, on the weights read back from model.ptz
    val_loss: float  # nats per token
    val_bpb_prequant: float  # the trained (or averaged: train.average) weights' before quantization
    val_loss_prequant: float
    val_tokens: int
    val_bytes: int
    artifact_bytes: int  # model_bytes + code_bytes
    model_bytes: int
    code_bytes: int
    payload_bytes: int  # the quantized payload before compression
    limit_bytes: int
    over_limit: bool
    unique_params: int
    virtual_layers: int
    steps: int
    train_tokens: int
    train_s: float
    step_ms: float
    tokens_per_s: float
    peak_mem_bytes: int
    compile_s: float
    eval_s: float
    export_s: float
    wall_s: float
    world_size: int
    device: str  # the GPU's name, or "cpu"
    config: dict  # RunConfig.to_dict() of the run
    startup_s: float | None = None
    wait_s: float | None = None
    attention: str | None = None
    flops_per_token: float | None = None  # mean over the trained tokens (fewer while recurrence is off)
    mfu: float | None = None
    val_bpb_prequant_raw: float | None = None  # the trained weights' before averaging (train.average)
    val_bpb_sliding: float | None = None  # the round trip's, by windows every train.eval_stride tokens
    val_loss_sliding: float | None = None
    upgraded_bits: dict | None = None  # tensor name -> width, for the tensors exported off their config width
    metrics_version: int = METRICS_VERSION

    @property
    def seed(self) -> int:
        """The training seed of the run's config."""
        return int(self.config["train"]["seed"])

    def to_dict(self) -> dict[str, Any]:
        """Every key as metrics.json holds it."""
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        """Write metrics.json whole or not at all (a temporary file renamed over it)."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        os.replace(partial, path)

    @classmethod
    def read(cls, path: Path) -> "RunMetrics":
        """The metrics in a metrics.json file; MetricsError naming the file if it cannot be."""
        return cls.from_dict(read_record(path), where=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = METRICS_FILE) -> "RunMetrics":
        """Check every key's presence and type (an older version may lack the later keys) and build the metrics."""
        version = _version(data, where)
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields})
        if unknown:
            raise MetricsError(f"{where}: unknown key(s) {unknown}; it is not a `trainer train` metrics file of "
                               f"version {version}")
        required = [f.name for f in fields if f.name != "metrics_version"
                    and (f.default is dataclasses.MISSING or ADDED_IN[f.name] <= version)]
        missing = [name for name in required if name not in data]
        if missing:
            raise MetricsError(f"{where}: lacks {missing}; the file is truncated or was not written by "
                               "`trainer train`: train the run again")
        hints = typing.get_type_hints(cls)
        values = {name: _checked(data[name], hints[name], f"{where}: {name}") for name in data}
        bits = values.get("upgraded_bits")
        if bits is not None and not all(isinstance(k, str) and _is_int(v) for k, v in bits.items()):
            raise MetricsError(f"{where}: upgraded_bits is {bits!r}, not tensor names -> widths; the file is "
                               "damaged: train the run again")
        train = values["config"].get("train")
        if not isinstance(train, dict) or not _is_int(train.get("seed")):
            raise MetricsError(f"{where}: config has no train.seed; the file was not written by `trainer train`")
        return cls(**{**values, "metrics_version": version})


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object of a metrics file (any version this module reads), or MetricsError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: no such file; pass the --out folder of a finished `trainer train` run")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetricsError(f"{path}: not readable JSON ({exc}); the file is damaged or truncated: "
                           "train the run again or restore the file") from None
    if not isinstance(data, dict):
        raise MetricsError(f"{path}: holds a JSON {type(data).__name__}, not a run's metrics object")
    _version(data, str(path))
    return data


def _version(data: dict[str, Any], where: str) -> int:
    version = data.get("metrics_version", 1)
    if not _is_int(version) or not 1 <= version <= METRICS_VERSION:
        raise MetricsError(f"{where}: metrics_version {version!r} is not one this trainer reads (1 to "
                           f"{METRICS_VERSION}); read it with the trainer that wrote it")
    return version


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked(value: Any, hint: Any, where: str) -> Any:
    """value as the field's type (an int is a float too), or MetricsError."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if int in allowed and _is_int(value):
        return value
    if any(t in (bool, str, dict) and isinstance(value, t) for t in allowed):
        return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise MetricsError(f"{where} is {value!r}, not {names}; the file is damaged: train the run again")
