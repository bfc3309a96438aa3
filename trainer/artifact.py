"""The size-limited artifact: quantized weights in a flat, pickle-free payload, compressed in a checksummed file.

Layout of the uncompressed payload:
    MAGIC (8 bytes) | header length (uint32 LE) | header JSON | int8 codes | fp16 scales | fp16 tensors
The header holds the model and export config (what rebuilding the model needs; training settings stay
out, so adding a training knob never changes an artifact's size) and, per tensor, its name, shape, kind,
offsets and bits. Shared blocks are stored once because the state_dict itself holds them once.
The file is trainer/compress.py's container around the compressed payload; older files are a bare zstd frame.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import zstandard

from trainer import compress as codec
from trainer.model_config import ArtifactConfig, ExportConfig, artifact_config_from_dict
from trainer.quant import FLOAT_DTYPE, SCALE_DTYPE, bits_for, dequantize_rows, is_quantized, quantize_rows, stored_bytes
from trainer.schedule import TensorSpec, tensor_layout

MAGIC = b"RSART01\n"
FORMAT_VERSION = 3  # 1 also stored the train section; 2 has no per-tensor bits; load() reads all three
READABLE_FORMATS = (1, 2, 3)
# Export fields added with format 3: an export leaving them all at their defaults is written as format 2, as before.
FORMAT_3_FIELDS = ("gptq", "gptq_calibration", "gptq_calibration_batches", "gptq_calibration_batch_tokens",
                   "gptq_temperature", "gptq_damp", "gptq_block_size", "upgrade_bits", "upgrade", "compressor",
                   "byte_shuffle", "upgrade_fit")
PACKAGE_DIR = Path(__file__).resolve().parent
# Source files a user needs to rebuild the model from the artifact and run it.
CODE_FILES = ("__init__.py", "model_config.py", "schedule.py", "attention.py", "embeddings.py", "model.py", "quant.py",
              "artifact.py", "compress.py")
DAMAGED_FIX = "re-export it with `python -m trainer export`"
_DEFAULT_EXPORT = ExportConfig()


class ArtifactError(ValueError):
    """The artifact file is not one this code can read."""


@dataclass(frozen=True)
class ArtifactInfo:
    """Sizes of a written artifact, in bytes."""

    model_bytes: int
    payload_bytes: int
    code_bytes: int
    compressor: str = "zstd"

    @property
    def artifact_bytes(self) -> int:
        return self.model_bytes + self.code_bytes


def code_bytes() -> int:
    """Bytes of the source files needed to rebuild and run the model, read from disk."""
    return sum((PACKAGE_DIR / name).stat().st_size for name in CODE_FILES)


def header_format(export: ExportConfig) -> int:
    """The payload format an export writes: 3 when it sets a format-3 field, else 2."""
    return 3 if any(getattr(export, f) != getattr(_DEFAULT_EXPORT, f) for f in FORMAT_3_FIELDS) else 2


def _tensor_table(cfg: ArtifactConfig, bits: dict[str, int] | None = None, format_version: int = 3) -> list[dict]:
    """Per-tensor entries with offsets, in payload order: codes, then scales, then floats.

    bits: widths of quantized tensors exported off their config width (a mixed allocation).
    """
    specs = tensor_layout(cfg.model)
    quantized = [s for s in specs if is_quantized(s, cfg.export)]
    floats = [s for s in specs if not is_quantized(s, cfg.export)]
    table, offset = [], 0
    for s in quantized:
        table.append({"name": s.name, "shape": list(s.shape), "kind": "q", "codes": offset})
        if format_version >= 3:
            table[-1]["bits"] = (bits or {}).get(s.name, bits_for(s, cfg.export))
        offset += s.numel
    by_name = {e["name"]: e for e in table}
    for s in quantized:
        by_name[s.name]["scales"] = offset
        offset += s.shape[0] * SCALE_DTYPE.itemsize
    for s in floats:
        table.append({"name": s.name, "shape": list(s.shape), "kind": "f16", "data": offset})
        offset += s.numel * FLOAT_DTYPE.itemsize
    return table


def _without_format_3(export: dict) -> dict:
    return {k: v for k, v in export.items() if k not in FORMAT_3_FIELDS}


def stored_config(cfg: ArtifactConfig, format_version: int = FORMAT_VERSION) -> dict:
    """The config sections an artifact keeps: model (fields off their defaults for techniques) and export
    (format 2: without the format-3 fields)."""
    export = cfg.to_dict()["export"]
    return {"model": cfg.model.header_fields(), "export": export if format_version >= 3 else _without_format_3(export)}


def header_bytes(cfg: ArtifactConfig, recorded: dict | None = None, format_version: int | None = None,
                 bits: dict[str, int] | None = None) -> bytes:
    """The JSON header exactly as written (deterministic for a config and its bit allocation).

    recorded: the config dict an older run wrote, to size its artifact as it was (its header held that dict
    verbatim: every section for format 1, model and export for formats 2 and 3, before fields added since).
    format_version: None for the one this export writes (header_format).
    """
    format_version = format_version or header_format(cfg.export)
    if recorded is None:
        config = stored_config(cfg, format_version)
    elif format_version == 1:
        config = {**recorded, "export": _without_format_3(recorded["export"])}
    else:
        export = recorded["export"] if format_version >= 3 else _without_format_3(recorded["export"])
        config = {"model": recorded["model"], "export": export}
    header = {"format": format_version, "config": config, "tensors": _tensor_table(cfg, bits, format_version)}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def payload_bytes(cfg: ArtifactConfig, recorded: dict | None = None, format_version: int | None = None,
                  bits: dict[str, int] | None = None) -> int:
    """Exact uncompressed payload size for a config, computed without any weights (see header_bytes)."""
    data = sum(stored_bytes(s, cfg.export) for s in tensor_layout(cfg.model))
    return len(MAGIC) + 4 + len(header_bytes(cfg, recorded, format_version, bits)) + data


def _quantize(name: str, tensor: torch.Tensor, bits: int, export: ExportConfig,
              hessians: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if export.gptq and name in hessians:
        from trainer.gptq import CLIP_QUANTILES, quantize_gptq  # export-only: not shipped

        clips = tuple(sorted({*CLIP_QUANTILES, export.clip_quantile}))
        return quantize_gptq(tensor, hessians[name], bits, export.gptq_damp, export.gptq_block_size, clips)
    return quantize_rows(tensor, bits, export.clip_quantile)


def pack(state: dict[str, torch.Tensor], cfg: ArtifactConfig,
         hessians: dict[str, torch.Tensor] | None = None, bits: dict[str, int] | None = None) -> bytes:
    """Quantize a state_dict and lay it out as the uncompressed payload.

    hessians (trainer.gptq.collect_hessians): required by export.gptq; they also rank the matrices for
    export.upgrade_bits (without them a weight-only proxy ranks them).
    bits: the upgraded matrices and their widths; None: chosen by the size model (bit_allocation).
    """
    specs = {s.name: s for s in tensor_layout(cfg.model)}
    missing = sorted(set(specs) - set(state))
    if missing:
        raise ArtifactError(f"state_dict lacks tensors {missing[:5]}: it does not match the config")
    if cfg.export.gptq and hessians is None:
        raise ArtifactError("export.gptq needs the Hessians of calibration batches; export with "
                            "trainer.export_pipeline.export_artifact, which collects them")
    if bits is None and cfg.export.upgrade_bits > cfg.export.quant_bits:
        from trainer.bit_allocation import allocate  # export-only: not shipped

        bits = allocate(state, cfg, hessians)
    codes, scales, floats = [], [], []
    for entry in _tensor_table(cfg, bits):
        tensor = state[entry["name"]].detach().cpu()
        if tuple(tensor.shape) != tuple(entry["shape"]):
            raise ArtifactError(f"{entry['name']}: shape {tuple(tensor.shape)} != layout {entry['shape']}")
        if entry["kind"] == "q":
            q, s = _quantize(entry["name"], tensor, entry["bits"], cfg.export, hessians)
            codes.append(q.numpy().tobytes())
            scales.append(s.numpy().tobytes())
        else:
            floats.append(tensor.to(FLOAT_DTYPE).numpy().tobytes())
    header = header_bytes(cfg, bits=bits)
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(codes + scales + floats)


def save(state: dict[str, torch.Tensor], cfg: ArtifactConfig, path: Path,
         hessians: dict[str, torch.Tensor] | None = None) -> ArtifactInfo:
    """Write the compressed artifact and return its sizes."""
    return write(pack(state, cfg, hessians), cfg, path)


def compress(payload: bytes, level: int) -> bytes:
    """The smaller of zstd at `level` and at FAST_ZSTD_LEVEL: both are plain zstd frames to the reader."""
    return codec.compress(payload, "zstd", level)


def fp16_start(payload: bytes) -> int:
    """Offset of the payload's fp16 part (scales, then float tensors): where the byte shuffle starts."""
    header, start = _header_of(payload, "payload")
    return start + sum(e["shape"][0] * e["shape"][1] for e in header["tensors"] if e["kind"] == "q")


def encode(payload: bytes, export: ExportConfig) -> bytes:
    """The artifact file for a payload: export.compressor ('best': the smallest of those installed)."""
    codecs = codec.available() if export.compressor == "best" else (export.compressor,)
    start = fp16_start(payload) if export.byte_shuffle else None
    return min((codec.encode(payload, name, export.zstd_level, start) for name in codecs), key=len)


def write(payload: bytes, cfg: ArtifactConfig, path: Path, blob: bytes | None = None) -> ArtifactInfo:
    """Compress a packed payload to path (the codecs release the GIL: this can run in a thread); return the sizes.
    blob: the payload already encoded."""
    blob = blob or encode(payload, cfg.export)
    Path(path).write_bytes(blob)
    return ArtifactInfo(model_bytes=len(blob), payload_bytes=len(payload), code_bytes=code_bytes(),
                        compressor=codec.codec_of(blob))


def holds(path: Path, payload: bytes) -> bool:
    """True when the artifact at path decodes to exactly this payload."""
    return payload_of(path) == payload


def payload_of(path: Path) -> bytes:
    """The payload an artifact file decompresses to; ArtifactError naming the file if it is damaged."""
    blob = Path(path).read_bytes()
    if blob.startswith(codec.MAGIC):
        try:
            return codec.decode(blob)
        except codec.DamagedError as exc:
            raise ArtifactError(f"{path} is damaged: {exc}; {DAMAGED_FIX}") from None
    if not blob.startswith(b"\x28\xb5\x2f\xfd"):  # an artifact from before the container: a bare zstd frame
        raise ArtifactError(f"{path}: no artifact header and not a zstd artifact either: damaged or another kind "
                            f"of file; pass the model.ptz written by training, or {DAMAGED_FIX}")
    try:
        return zstandard.ZstdDecompressor().decompress(blob)
    except zstandard.ZstdError as exc:
        raise ArtifactError(f"{path}: not a zstd artifact ({exc}); damaged? {DAMAGED_FIX}") from None


def _read_payload(path: Path) -> tuple[dict, memoryview]:
    return _parse_payload(payload_of(path), str(path))


def header_of(payload: bytes) -> dict:
    """The JSON header of a payload."""
    return _header_of(payload, "payload")[0]


def _header_of(payload: bytes, where: str) -> tuple[dict, int]:
    if not payload.startswith(MAGIC):
        raise ArtifactError(f"{where}: wrong magic; this is not a Recurrence Search artifact")
    (length,) = struct.unpack_from("<I", payload, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(payload[start : start + length])
    except ValueError:
        raise ArtifactError(f"{where}: unreadable header; the file is damaged, {DAMAGED_FIX}") from None
    if header.get("format") not in READABLE_FORMATS:
        raise ArtifactError(f"{where}: format {header.get('format')} unsupported (this code reads {READABLE_FORMATS})")
    return header, start + length


def _parse_payload(payload: bytes, where: str) -> tuple[dict, memoryview]:
    header, start = _header_of(payload, where)
    return header, memoryview(payload)[start:]


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
