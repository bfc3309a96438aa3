"""The size-limited artifact: quantized weights in a flat, pickle-free container, zstd-compressed.

Layout of the uncompressed payload:
    MAGIC (8 bytes) | header length (uint32 LE) | header JSON | int8 codes | fp16 scales | fp16 tensors
The header holds the model and export config (what rebuilding the model needs; training settings stay
out, so adding a training knob never changes an artifact's size) and, per tensor, its name, shape, kind
and offsets. Shared blocks are stored once because the state_dict itself holds them once.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import zstandard

from trainer.model_config import ArtifactConfig, ExportConfig, artifact_config_from_dict
from trainer.quant import FLOAT_DTYPE, SCALE_DTYPE, bits_for, dequantize_rows, is_quantized, quantize_rows, stored_bytes
from trainer.schedule import TensorSpec, tensor_layout

MAGIC = b"RSART01\n"
FORMAT_VERSION = 2  # 1 also stored the train section; load() still reads it
READABLE_FORMATS = (1, 2)
PACKAGE_DIR = Path(__file__).resolve().parent
# zstd-22's optimal parser buys short matches that cost more than the literals they replace in low-bit codes:
# on a trained 9x512 payload re-quantized to int5, level 1 gave 9,247,056 bytes against 10,006,685 at level 22
# (-7.6%, in 0.02 s instead of 24 s; BENCHMARKS.md). Level 22 still wins by up to 0.2% on some int8 payloads,
# so the artifact is the smaller of the two.
FAST_ZSTD_LEVEL = 1
# Source files a user needs to rebuild the model from the artifact and run it.
CODE_FILES = ("__init__.py", "model_config.py", "schedule.py", "attention.py", "embeddings.py", "model.py", "quant.py",
              "artifact.py")


class ArtifactError(ValueError):
    """The artifact file is not one this code can read."""


@dataclass(frozen=True)
class ArtifactInfo:
    """Sizes of a written artifact, in bytes."""

    model_bytes: int
    payload_bytes: int
    code_bytes: int

    @property
    def artifact_bytes(self) -> int:
        return self.model_bytes + self.code_bytes


def code_bytes() -> int:
    """Bytes of the source files needed to rebuild and run the model, read from disk."""
    return sum((PACKAGE_DIR / name).stat().st_size for name in CODE_FILES)


def _tensor_table(cfg: ArtifactConfig) -> list[dict]:
    """Per-tensor entries with offsets, in payload order: codes, then scales, then floats."""
    specs = tensor_layout(cfg.model)
    quantized = [s for s in specs if is_quantized(s, cfg.export)]
    floats = [s for s in specs if not is_quantized(s, cfg.export)]
    table, offset = [], 0
    for s in quantized:
        table.append({"name": s.name, "shape": list(s.shape), "kind": "q", "codes": offset})
        offset += s.numel
    by_name = {e["name"]: e for e in table}
    for s in quantized:
        by_name[s.name]["scales"] = offset
        offset += s.shape[0] * SCALE_DTYPE.itemsize
    for s in floats:
        table.append({"name": s.name, "shape": list(s.shape), "kind": "f16", "data": offset})
        offset += s.numel * FLOAT_DTYPE.itemsize
    return table


def stored_config(cfg: ArtifactConfig) -> dict:
    """The config sections an artifact keeps: model and export."""
    return {"model": cfg.model.header_fields(), "export": cfg.to_dict()["export"]}


def header_bytes(cfg: ArtifactConfig, recorded: dict | None = None, format_version: int = FORMAT_VERSION) -> bytes:
    """The JSON header exactly as written (deterministic for a config).

    recorded: the config dict an older run wrote, to size its artifact as it was (its header held that dict
    verbatim: every section for format 1, model and export for format 2, before fields added since).
    """
    if recorded is None:
        config = stored_config(cfg)
    elif format_version == 1:
        config = recorded
    else:
        config = {"model": recorded["model"], "export": recorded["export"]}
    header = {"format": format_version, "config": config, "tensors": _tensor_table(cfg)}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def payload_bytes(cfg: ArtifactConfig, recorded: dict | None = None, format_version: int = FORMAT_VERSION) -> int:
    """Exact uncompressed payload size for a config, computed without any weights (see header_bytes)."""
    data = sum(stored_bytes(s, cfg.export) for s in tensor_layout(cfg.model))
    return len(MAGIC) + 4 + len(header_bytes(cfg, recorded, format_version)) + data


def pack(state: dict[str, torch.Tensor], cfg: ArtifactConfig) -> bytes:
    """Quantize a state_dict and lay it out as the uncompressed payload."""
    specs = {s.name: s for s in tensor_layout(cfg.model)}
    missing = sorted(set(specs) - set(state))
    if missing:
        raise ArtifactError(f"state_dict lacks tensors {missing[:5]}: it does not match the config")
    codes, scales, floats = [], [], []
    for entry in _tensor_table(cfg):
        tensor = state[entry["name"]].detach().cpu()
        if tuple(tensor.shape) != tuple(entry["shape"]):
            raise ArtifactError(f"{entry['name']}: shape {tuple(tensor.shape)} != layout {entry['shape']}")
        if entry["kind"] == "q":
            q, s = quantize_rows(tensor, bits_for(specs[entry["name"]], cfg.export), cfg.export.clip_quantile)
            codes.append(q.numpy().tobytes())
            scales.append(s.numpy().tobytes())
        else:
            floats.append(tensor.to(FLOAT_DTYPE).numpy().tobytes())
    header = header_bytes(cfg)
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(codes + scales + floats)


def save(state: dict[str, torch.Tensor], cfg: ArtifactConfig, path: Path) -> ArtifactInfo:
    """Write the compressed artifact and return its sizes."""
    return write(pack(state, cfg), cfg, path)


def compress(payload: bytes, level: int) -> bytes:
    """The smaller of zstd at `level` and at FAST_ZSTD_LEVEL: both are plain zstd frames to the reader."""
    strong = zstandard.ZstdCompressor(level=level).compress(payload)
    if level == FAST_ZSTD_LEVEL:
        return strong
    return min(strong, zstandard.ZstdCompressor(level=FAST_ZSTD_LEVEL).compress(payload), key=len)


def write(payload: bytes, cfg: ArtifactConfig, path: Path) -> ArtifactInfo:
    """Compress a packed payload to path (zstd releases the GIL: this can run in a thread) and return the sizes."""
    blob = compress(payload, cfg.export.zstd_level)
    Path(path).write_bytes(blob)
    return ArtifactInfo(model_bytes=len(blob), payload_bytes=len(payload), code_bytes=code_bytes())


def holds(path: Path, payload: bytes) -> bool:
    """True when the artifact at path decompresses to exactly this payload."""
    return _decompressed(path) == payload


def _decompressed(path: Path) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(Path(path).read_bytes())
    except zstandard.ZstdError as exc:
        raise ArtifactError(f"{path}: not a zstd artifact ({exc}); pass the model.ptz written by training") from None


def _read_payload(path: Path) -> tuple[dict, memoryview]:
    return _parse_payload(_decompressed(path), str(path))


def _parse_payload(payload: bytes, where: str) -> tuple[dict, memoryview]:
    if not payload.startswith(MAGIC):
        raise ArtifactError(f"{where}: wrong magic; this is not a Recurrence Search artifact")
    (length,) = struct.unpack_from("<I", payload, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(payload[start : start + length])
    if header.get("format") not in READABLE_FORMATS:
        raise ArtifactError(f"{where}: format {header.get('format')} unsupported (this code reads {READABLE_FORMATS})")
    return header, memoryview(payload)[start + length :]


def _tensor_at(data: memoryview, offset: int, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    count = 1
    for d in shape:
        count *= d
    return torch.frombuffer(bytearray(data[offset : offset + count * dtype.itemsize]), dtype=dtype).reshape(shape)


def load(path: Path) -> tuple[ArtifactConfig, dict[str, torch.Tensor]]:
    """Read an artifact back: its model and export config and a dequantized float32 state_dict."""
    return _unpack(*_read_payload(path), where=str(path))


def unpack(payload: bytes, where: str = "payload") -> tuple[ArtifactConfig, dict[str, torch.Tensor]]:
    """Like load, from an uncompressed payload in memory (what pack returned)."""
    return _unpack(*_parse_payload(payload, where), where=where)


def _unpack(header: dict, data: memoryview, where: str) -> tuple[ArtifactConfig, dict[str, torch.Tensor]]:
    cfg = artifact_config_from_dict(header["config"], where=where)
    state = {}
    for entry in header["tensors"]:
        shape = entry["shape"]
        if entry["kind"] == "q":
            codes = _tensor_at(data, entry["codes"], torch.int8, shape)
            scales = _tensor_at(data, entry["scales"], SCALE_DTYPE, [shape[0]])
            state[entry["name"]] = dequantize_rows(codes, scales)
        else:
            state[entry["name"]] = _tensor_at(data, entry["data"], FLOAT_DTYPE, shape).float()
    return cfg, state


def layout_for(cfg: ArtifactConfig) -> list[TensorSpec]:
    """The tensors an artifact of this config stores (re-exported for the size model)."""
    return tensor_layout(cfg.model)


def within_limit(info: ArtifactInfo, export: ExportConfig) -> bool:
    """True when the artifact (model + code) fits the hard byte limit."""
    return info.artifact_bytes <= export.limit_bytes
