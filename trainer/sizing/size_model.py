"""Artifact size model: exact parameter and payload counts, plus a calibrated zstd-22 size prediction.

Prediction: compressed model bytes ~= sum over features of value x fitted bytes-per-unit (linear). The
quantized codes are modelled physically: per-row symmetric quantization clips each row at ~its max |w|,
so the bytes one code costs are about a constant (`codes`, an int6 code in a 512-long row), plus a cost
per bit of grid resolution (`code_bits`, per log2(qmax) beyond int6's), plus a cost per doubling of the
row length (`code_log2_fanin`, negative for trained weights: a longer heavy-tailed row has its max further
out, so its codes crowd near 0). Output projections start at zero and hold only what training wrote, which
compresses differently (measured on H100: 4.8-5.0 bits per int6 code against 5.3 for q/k/v/fc), so they get
their own offset and row-length slope (`zero_init_codes`, `zero_init_log2_fanin`). GPTQ's rounding (export.gptq)
compresses worse than rounding to nearest: the same H100 weights exported both ways differed by 2.1% (BENCHMARKS.md,
ablation), so each block-matrix code GPTQ rounds adds its own bytes (`gptq_codes`). fp16 scales, fp16 weight
matrices kept float, fp16 control scalars, the header and the zstd frame each get their own bytes-per-unit.

The fit assumes Gaussian-initialised matrices (model.weight_init: normal, the default), whose codes start
close to where training leaves them. A uniformly initialised matrix's codes are incompressible until
training has moved it, by an amount the config does not fix, so under weight_init: uniform every block
matrix's codes are priced at their full bit width (`uniform_code_bytes`, coefficient fixed at 1), an upper
bound: never under, 5-14% over on the H100 runs. The zero-initialised ones are bounded too, not fitted: the
Gaussian-init runs barely tell their cost from the others' (it moves together with `codes`: any zero_init_codes
from -2 to -0.4 bits fits them about equally), so a uniform config, which keeps only them, would inherit an
arbitrary split (the 2026-11-25 refit put it at the -2-bit bound and under-predicted the 180 s uniform run by
5.2%). Coefficients and the safety margin live in size_calibration.json, written by `python -m spaces
calibrate` (see calibration.py).

Each tensor is priced at the bits it is exported at. A mixed-width export (export.upgrade_bits) widens the
block matrices its trained weights rank most sensitive, each only while the prediction still fits; which ones
is known only after training, so a config is priced at the worst case its rule allows: the most upgraded codes
of any allocation that fits (worst_case_upgrades). The file adds a fixed container header (CONTAINER_BYTES) to
the compressed bytes. The fit is on zstd; export.compressor "best" is never larger than zstd.
"""
from __future__ import annotations

import dataclasses

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from trainer import artifact
from trainer.compress import CONTAINER_BYTES
from trainer.model_config import QUANT_BITS, ArtifactConfig, ConfigError, ExportConfig
from trainer.run_config import RunConfig
from trainer.quant import bits_for, is_quantized, qmax, stored_bytes
from trainer.schedule import TensorSpec, tensor_layout, unique_params

CALIBRATION_PATH = Path(__file__).resolve().parent / "size_calibration.json"
# Embedding exports wider than the matrices, widest first: float16, int8. The tied embedding is also the output
# head; at int6 it was most of the round-trip cost (BENCHMARKS.md, Exports: the baseline shape +0.027 val_bpb
# at int6, +0.003 with a float16 embedding).
EMBEDDING_WIDTHS = (16, 8)
REFERENCE_BITS = 6  # code_bits is centred here: an int6 code adds 0 to it
REFERENCE_FANIN = 512  # code_log2_fanin is centred here: a 512-long row adds 0 to it
# Regression features, in a fixed order (see the module docstring for what each one measures).
FEATURES = ("codes", "code_bits", "code_log2_fanin", "zero_init_codes", "zero_init_log2_fanin", "gptq_codes",
            "scales_fp16", "floats_fp16", "scalars_fp16", "header_bytes", "frame", "uniform_code_bytes")
# Features whose bytes per unit are known exactly, not fitted: a code priced at its full bit width costs it.
FIXED_COEFFICIENTS = {"uniform_code_bytes": 1.0}


class SizeLimitError(ConfigError):
    """A config is predicted over the artifact byte limit; the message gives the sizes and the fix."""


@dataclass(frozen=True)
class Calibration:
    """Fitted bytes per unit of each feature, the safety margin (a fraction of model bytes, plus bytes per
    |unit| of any feature too thinly measured to cross-validate) and provenance."""

    coefficients: dict[str, float]
    safety_margin_fraction: float
    provenance: dict
    feature_margins: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form (what calibrate writes)."""
        return {
            "coefficients": self.coefficients,
            "safety_margin_fraction": self.safety_margin_fraction,
            "feature_margins": self.feature_margins,
            "provenance": self.provenance,
        }


@dataclass(frozen=True)
class SizePrediction:
    """Predicted artifact size of one config against the hard limit, in bytes."""

    unique_params: int
    payload_bytes: int
    predicted_model_bytes: int
    code_bytes: int
    predicted_artifact_bytes: int
    limit_bytes: int
    safety_margin_bytes: int
    fits: bool
    margin_bytes: int  # headroom left under the limit after the safety margin; negative means over

    def describe(self) -> str:
        """One line with every figure that decides the fit."""
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"predicted artifact {self.predicted_artifact_bytes:,} bytes (model {self.predicted_model_bytes:,} "
            f"+ code {self.code_bytes:,}) + safety margin {self.safety_margin_bytes:,} vs limit "
            f"{self.limit_bytes:,}: {verdict} ({self.margin_bytes:+,} bytes headroom)"
        )


def load_calibration(path: Path | str | None = None) -> Calibration:
    """Read a calibration JSON (default: trainer/sizing/size_calibration.json)."""
    path = Path(path) if path else CALIBRATION_PATH
    return _load_calibration_cached(str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0)


@functools.lru_cache(maxsize=8)
def _load_calibration_cached(path: str, _mtime_ns: int) -> Calibration:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no size calibration; run `python -m spaces calibrate RUN_DIR ...` to write one")
    data = json.loads(Path(path).read_text())
    coefficients = {**FIXED_COEFFICIENTS, **data.get("coefficients", {})}
    changed = [f for f, v in FIXED_COEFFICIENTS.items() if coefficients[f] != v]
    if changed:
        raise ConfigError(f"{path}: coefficients {changed} are fixed at {FIXED_COEFFICIENTS}, not fitted; delete them "
                          f"or re-run `python -m spaces calibrate RUN_DIR ...`")
    missing = [f for f in FEATURES if f not in coefficients]
    if missing:
        raise ConfigError(f"{path}: coefficients lack {missing} (an older size-model format?); "
                          f"re-run `python -m spaces calibrate RUN_DIR ...` to write a current one")
    unknown = sorted(set(data.get("feature_margins", {})) - set(FEATURES))
    if unknown:
        raise ConfigError(f"{path}: feature_margins name unknown features {unknown}; re-run `python -m spaces calibrate`")
    return Calibration(
        coefficients={f: float(coefficients[f]) for f in FEATURES},
        safety_margin_fraction=float(data["safety_margin_fraction"]),
        provenance=data.get("provenance", {}),
        feature_margins={f: float(v) for f, v in data.get("feature_margins", {}).items()},
    )


def code_bits(bits: int) -> float:
    """Grid resolution of a bit width relative to int6, in bits: log2(qmax(bits) / qmax(6))."""
    return math.log2(qmax(bits) / qmax(REFERENCE_BITS))


def priced_at_full_width(spec: TensorSpec, cfg: ArtifactConfig) -> bool:
    """Whether a tensor's codes are priced at their full bit width: every block matrix of a weight_init: uniform
    config (those not starting at zero are drawn uniform; the zero-initialised ones are bounded, see above)."""
    return cfg.model.weight_init == "uniform" and spec.role == "matrix"


def features(cfg: ArtifactConfig, payload_bytes: int | None = None, bits: dict[str, int] | None = None) -> dict[str, float]:
    """Values of each feature for a config (the regression inputs; code_* are centred, so may be negative).

    bits: widths of quantized tensors exported off their config width (a mixed allocation).
    """
    values = dict.fromkeys(FEATURES, 0.0)
    data_bytes = 0
    for spec, quantized, stored in _layout(cfg):
        data_bytes += stored
        if quantized:
            width = (bits or {}).get(spec.name) or bits_for(spec, cfg.export)
            values["scales_fp16"] += spec.shape[0]
            if priced_at_full_width(spec, cfg):
                values["uniform_code_bytes"] += spec.numel * width / 8
                continue
            log2_fanin = math.log2(spec.shape[1] / REFERENCE_FANIN)
            values["codes"] += spec.numel
            values["code_bits"] += spec.numel * code_bits(width)
            values["code_log2_fanin"] += spec.numel * log2_fanin
            if spec.starts_at_zero:  # holds only what training wrote: its own offset and row-length slope
                values["zero_init_codes"] += spec.numel
                values["zero_init_log2_fanin"] += spec.numel * log2_fanin
            if cfg.export.gptq and spec.role == "matrix":  # GPTQ rounds the block matrices (trainer.gptq)
                values["gptq_codes"] += spec.numel
        elif spec.role == "scalar":
            values["scalars_fp16"] += spec.numel
        else:
            values["floats_fp16"] += spec.numel  # a weight matrix small enough to stay float16
    # Header = whatever the exact payload holds beyond the tensor data (magic, length, JSON).
    payload = _payload_bytes(cfg, bits) if payload_bytes is None else payload_bytes
    values["header_bytes"] = payload - data_bytes
    values["frame"] = 1
    return values


@functools.lru_cache(maxsize=4096)
def _layout(cfg: ArtifactConfig) -> tuple[tuple[TensorSpec, bool, int], ...]:
    """Each tensor of the artifact: (spec, quantized, stored bytes). Cached: the many allocations one config's
    worst case prices, and a space's many configs of one shape, share it."""
    return tuple((s, is_quantized(s, cfg.export), stored_bytes(s, cfg.export)) for s in tensor_layout(cfg.model))


_unique_params = functools.lru_cache(maxsize=4096)(unique_params)


@functools.lru_cache(maxsize=4096)
def _config_payload_bytes(cfg: ArtifactConfig) -> int:
    return artifact.payload_bytes(cfg)


def _payload_bytes(cfg: ArtifactConfig, bits: dict[str, int] | None) -> int:
    """artifact.payload_bytes(cfg, bits=bits) without writing the header again: an allocation changes only the
    digits of the tensor table's "bits" entries (format 3 records them; the data bytes do not depend on them)."""
    payload = _config_payload_bytes(cfg)
    if not bits or artifact.header_format(cfg.export) < 3:
        return payload
    configured = {s.name: bits_for(s, cfg.export) for s, quantized, _ in _layout(cfg) if quantized}
    return payload + sum(len(str(width)) - len(str(configured[name]))
                         for name, width in bits.items() if name in configured)


def zstd_bound_bytes(payload_bytes: int) -> int:
    """The largest file a payload can make: zstd's worst case (ZSTD_COMPRESSBOUND) plus the container header."""
    small = (128 * 1024 - payload_bytes) >> 11 if payload_bytes < 128 * 1024 else 0
    return payload_bytes + (payload_bytes >> 8) + small + CONTAINER_BYTES


def predict_model_bytes(values: dict[str, float], calibration: Calibration) -> float:
    """Linear compression model: sum of feature value x bytes-per-unit."""
    return sum(values[f] * calibration.coefficients[f] for f in FEATURES)


def safety_margin_bytes(values: dict[str, float], model_bytes: float, calibration: Calibration) -> float:
    """Margin for the fit's error: a fraction of model bytes plus |value| x bytes for thinly measured features."""
    extra = sum(abs(values[f]) * m for f, m in calibration.feature_margins.items())
    return calibration.safety_margin_fraction * model_bytes + extra


@functools.lru_cache(maxsize=1)
def current_code_bytes() -> int:
    """Code bytes of the trainer sources on disk (read once per process)."""
    return artifact.code_bytes()


def predict(cfg: RunConfig, calibration: Calibration | None = None, code_bytes: int | None = None,
            bits: dict[str, int] | None = None) -> SizePrediction:
    """Predict whether a config's artifact fits the limit, with exact counts and a calibrated compressed size.

    bits: a mixed allocation to price; without it, a config with upgrades is priced at worst_case_upgrades.
    """
    calibration = calibration or load_calibration()
    code = current_code_bytes() if code_bytes is None else code_bytes
    if bits is None and upgrades_on(cfg.export):
        bits = worst_case_upgrades(cfg, calibration, code)
    return _predict(cfg, calibration, code, tuple(sorted((bits or {}).items())))


def _pricing(calibration: Calibration) -> tuple:
    """The parts of a calibration a prediction reads, hashable (provenance left out)."""
    return (tuple(sorted(calibration.coefficients.items())), calibration.safety_margin_fraction,
            tuple(sorted(calibration.feature_margins.items())))


def _calibration_of(pricing: tuple) -> Calibration:
    coefficients, fraction, margins = pricing
    return Calibration(dict(coefficients), fraction, {}, dict(margins))


def _sized(cfg: RunConfig) -> ArtifactConfig:
    """The sections an artifact's size depends on: configs differing only in training share its predictions."""
    return ArtifactConfig(cfg.model, cfg.export)


@functools.lru_cache(maxsize=65536)
def _predict_cached(sized: ArtifactConfig, pricing: tuple, code: int, bits: tuple) -> SizePrediction:
    return _predict_uncached(sized, _calibration_of(pricing), code, dict(bits))


def _predict(cfg: RunConfig, calibration: Calibration, code: int, bits: tuple = ()) -> SizePrediction:
    return _predict_cached(_sized(cfg), _pricing(calibration), code, bits)


def _predict_uncached(cfg: ArtifactConfig, calibration: Calibration, code: int, bits: dict[str, int]) -> SizePrediction:
    payload = _payload_bytes(cfg, bits)
    bound = zstd_bound_bytes(payload)
    values = features(cfg, payload, bits)
    model = min(math.ceil(predict_model_bytes(values, calibration)) + CONTAINER_BYTES, bound)
    # The margin covers the fit's error, but never beyond zstd's hard bound (measured can't exceed it).
    safety = min(math.ceil(safety_margin_bytes(values, model, calibration)), bound - model)
    total = model + code
    limit = cfg.export.limit_bytes
    return SizePrediction(
        unique_params=_unique_params(cfg.model),
        payload_bytes=payload,
        predicted_model_bytes=model,
        code_bytes=code,
        predicted_artifact_bytes=total,
        limit_bytes=limit,
        safety_margin_bytes=safety,
        fits=total + safety <= limit,
        margin_bytes=limit - total - safety,
    )


def upgrades_on(export: ExportConfig) -> bool:
    """Whether an export widens some block matrices (export.upgrade_bits above quant_bits)."""
    return export.upgrade_bits > export.quant_bits and export.upgrade != 0


def upgrade_candidates(cfg: ArtifactConfig) -> list[TensorSpec]:
    """The tensors an upgrade may widen: the quantized block matrices (the embedding has its own width)."""
    return [s for s, quantized, _ in _layout(cfg) if s.role == "matrix" and quantized]


def upgrade_cap(cfg: ArtifactConfig) -> int:
    """The most matrices an export may upgrade: all candidates for "fill", else export.upgrade of them."""
    count = len(upgrade_candidates(cfg))
    return count if cfg.export.upgrade == "fill" else min(int(cfg.export.upgrade), count)


def worst_case_upgrades(cfg: RunConfig, calibration: Calibration | None = None,
                        code_bytes: int | None = None) -> dict[str, int]:
    """The allocation pricing a mixed-width config before training: of all sets of at most upgrade_cap
    candidates whose upgrade is predicted to fit, one with the most upgraded codes (an upper bound on what the
    trained weights' ranking can upgrade). {} when the config does not fit even without upgrades.

    Only the number of upgraded codes moves the prediction, and the priced bytes are convex in it, so the
    totals that fit are a prefix of the reachable ones: a binary search over them finds the largest.
    """
    calibration = calibration or load_calibration()
    code = current_code_bytes() if code_bytes is None else code_bytes
    return dict(_worst_case_cached(_sized(cfg), _pricing(calibration), code))


@functools.lru_cache(maxsize=16384)
def _worst_case_cached(cfg: ArtifactConfig, pricing: tuple, code: int) -> tuple[tuple[str, int], ...]:
    classes: dict[int, list[str]] = {}
    for spec in upgrade_candidates(cfg):
        classes.setdefault(spec.numel, []).append(spec.name)
    cap = upgrade_cap(cfg)
    reach: dict[int, tuple[int, ...]] = {0: ()}  # upgraded codes -> matrices taken of each class (fewest)
    for numel, names in classes.items():
        grown: dict[int, tuple[int, ...]] = {}
        for total, counts in reach.items():
            for k in range(min(len(names), cap - sum(counts)) + 1):
                key, taken = total + k * numel, counts + (k,)
                if key not in grown or sum(taken) < sum(grown[key]):
                    grown[key] = taken
        reach = grown

    def allocation(total: int) -> dict[str, int]:
        counts = reach[total]
        names = [name for group, k in zip(classes.values(), counts) for name in group[:k]]
        return dict.fromkeys(names, cfg.export.upgrade_bits)

    def fits(total: int) -> bool:
        return _predict_cached(cfg, pricing, code, tuple(sorted(allocation(total).items()))).fits

    totals = sorted(reach)
    if not fits(totals[0]):
        return ()
    low, high = 0, len(totals) - 1  # totals[low] fits; find the last that does
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(totals[middle]) else (low, middle - 1)
    return tuple(allocation(totals[low]).items())


def widest_fitting_bits(cfg: RunConfig, calibration: Calibration | None = None) -> int | None:
    """The most quantization bits (of QUANT_BITS) at which cfg is predicted to fit, or None if none fits.

    Training never reads export.quant_bits (a search's int5 and int6 trials of one shape train identically), so
    the bits can be chosen after training: the widest that fits loses least in the round trip.
    """
    for bits in sorted(QUANT_BITS, reverse=True):
        candidate = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, quant_bits=bits))
        if predict(candidate, calibration).fits:
            return bits
    return None


def widest_fitting_embedding_bits(cfg: RunConfig, calibration: Calibration | None = None) -> int:
    """The widest embedding export above cfg's matrix bits (of EMBEDDING_WIDTHS) predicted to fit; else 0 (the
    embedding at the matrices' bits). Like quant_bits, training never reads it."""
    for bits in EMBEDDING_WIDTHS:
        if bits > cfg.export.quant_bits:
            candidate = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, embedding_bits=bits))
            if predict(candidate, calibration).fits:
                return bits
    return 0


def check_fits(cfg: RunConfig, calibration: Calibration | None = None, code_bytes: int | None = None) -> SizePrediction:
    """Return the prediction, or raise SizeLimitError naming the sizes, the margin and the fix."""
    prediction = predict(cfg, calibration, code_bytes)
    if not prediction.fits:
        raise SizeLimitError(
            f"config over the {prediction.limit_bytes:,}-byte limit by {-prediction.margin_bytes:,} bytes: "
            f"{prediction.describe()}; fix: lower export.quant_bits, model.model_dim, model.mlp_mult, "
            f"model.unique_blocks or untie fewer MLPs"
        )
    return prediction
