"""Per-row symmetric integer quantization of weight matrices (pure functions)."""
from __future__ import annotations

import torch

from trainer.model_config import ExportConfig
from trainer.schedule import TensorSpec

SCALE_DTYPE = torch.float16
FLOAT_DTYPE = torch.float16
FLOAT_BITS = 16  # export.embedding_bits that keeps the embedding float16


def qmax(bits: int) -> int:
    """Largest code of a signed symmetric `bits`-bit grid (127 for int8, 31 for int6)."""
    return (1 << (bits - 1)) - 1


def embedding_bits(export: ExportConfig) -> int:
    """Bits the embedding is exported at: export.embedding_bits when set, else export.quant_bits."""
    return export.embedding_bits or export.quant_bits


def bits_for(spec: TensorSpec, export: ExportConfig) -> int:
    """Bits a tensor is exported at (FLOAT_BITS: kept float16)."""
    return embedding_bits(export) if spec.role == "embedding" else export.quant_bits


def width_name(bits: int) -> str:
    """How a width reads in messages: 'float16' or 'int6'."""
    return "float16" if bits == FLOAT_BITS else f"int{bits}"


def export_label(export: ExportConfig) -> str:
    """Short label of an export's widths: 'int6', or 'int6 emb float16' when the embedding differs."""
    label, embedding = width_name(export.quant_bits), embedding_bits(export)
    return label if embedding == export.quant_bits else f"{label} emb {width_name(embedding)}"


def is_quantized(spec: TensorSpec, export: ExportConfig) -> bool:
    """Large matrices and the embedding are quantized (unless kept float16); small tensors stay float16."""
    return (spec.role in ("matrix", "embedding") and len(spec.shape) == 2 and spec.numel > export.keep_float_max_numel
            and bits_for(spec, export) != FLOAT_BITS)


def stored_bytes(spec: TensorSpec, export: ExportConfig) -> int:
    """Exact uncompressed bytes this tensor takes in the artifact payload."""
    if is_quantized(spec, export):
        rows = spec.shape[0]
        return spec.numel * 1 + rows * SCALE_DTYPE.itemsize  # int8 containers + one fp16 scale per row
    return spec.numel * FLOAT_DTYPE.itemsize


def row_clip(weight: torch.Tensor, clip_quantile: float) -> torch.Tensor:
    """Per-row clipping threshold: the given quantile of |w| in each row."""
    absw = weight.abs().float()
    if clip_quantile >= 1.0:
        return absw.amax(dim=1)
    return torch.quantile(absw, clip_quantile, dim=1)


def row_scales(weight: torch.Tensor, bits: int, clip_quantile: float) -> torch.Tensor:
    """Per-row fp16 scales that put each row's clip threshold on the grid's largest code."""
    return (row_clip(weight, clip_quantile).clamp_min(1e-8) / qmax(bits)).to(SCALE_DTYPE)


def round_rows(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of each row rounded to the nearest step of its (stored fp16) scale, clamped to the grid."""
    s = scale.float().clamp_min(torch.finfo(SCALE_DTYPE).tiny)[:, None]
    return torch.clamp(torch.round(weight.float() / s), -qmax(bits), qmax(bits)).to(torch.int8)


def quantize_rows(weight: torch.Tensor, bits: int, clip_quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D float tensor per row; returns (int8 codes, fp16 scales)."""
    if weight.ndim != 2:
        raise ValueError(f"quantize_rows needs a 2-D tensor, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    scale = row_scales(w, bits, clip_quantile)
    return round_rows(w, scale, bits).contiguous(), scale.contiguous()


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of quantize_rows, in float32."""
    return codes.float() * scale.float()[:, None]
