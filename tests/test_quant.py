import pytest
import torch

from trainer.model_config import ExportConfig
from trainer.quant import bits_for, dequantize_rows, is_quantized, qmax, quantize_rows, stored_bytes
from trainer.schedule import TensorSpec


@pytest.mark.parametrize("bits", [8, 6, 5])
def test_round_trip_error_is_within_half_a_step_per_row(bits):
    torch.manual_seed(0)
    w = torch.randn(64, 300) * torch.linspace(0.01, 2.0, 64)[:, None]
    codes, scale = quantize_rows(w, bits, clip_quantile=1.0)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float16
    assert codes.abs().max().item() <= qmax(bits)
    err = (dequantize_rows(codes, scale) - w).abs()
    step = scale.float()[:, None]
    assert torch.all(err <= 0.5 * step + 1e-6 + w.abs() * 2e-3)  # fp16 scale rounding adds a relative term


def test_clipping_limits_outliers_to_the_row_quantile():
    w = torch.randn(4, 10_000)
    w[0, 0] = 1000.0
    codes, scale = quantize_rows(w, 8, clip_quantile=0.999)
    restored = dequantize_rows(codes, scale)
    assert restored[0, 0] < 10.0  # the outlier was clipped, not allowed to blow up the row's scale
    assert scale[0].item() < 0.1


@pytest.mark.parametrize("bits", [8, 6, 5])
def test_clipping_is_symmetric_for_outliers_of_either_sign(bits):
    """A row's clip threshold is a quantile of |w|: a negative outlier is clipped to -qmax codes exactly as a
    positive one to +qmax, and negating the weights negates the codes (round half to even is odd-symmetric)."""
    torch.manual_seed(1)
    w = torch.randn(4, 2_000)
    w[0, 0], w[1, 0], w[2, 0], w[2, 1] = 1000.0, -1000.0, 500.0, -500.0
    codes, scale = quantize_rows(w, bits, clip_quantile=0.99)
    restored = dequantize_rows(codes, scale)
    q = qmax(bits)
    assert codes.min().item() == -q and codes.max().item() == q  # the grid is [-qmax, qmax], never -qmax - 1
    assert codes[0, 0].item() == q and codes[1, 0].item() == -q
    assert codes[2, 0].item() == q and codes[2, 1].item() == -q
    for row, col in ((0, 0), (1, 0), (2, 0), (2, 1)):  # clipped to the row's threshold, sign kept
        threshold = torch.quantile(w[row].abs(), 0.99).item()
        assert restored[row, col].item() == pytest.approx(threshold * (1 if w[row, col] > 0 else -1), rel=2e-3)
    neg_codes, neg_scale = quantize_rows(-w, bits, clip_quantile=0.99)
    assert torch.equal(neg_scale, scale) and torch.equal(neg_codes, -codes)


def test_zero_rows_do_not_divide_by_zero():
    codes, scale = quantize_rows(torch.zeros(3, 8), 8, 0.99)
    assert torch.all(codes == 0) and torch.isfinite(dequantize_rows(codes, scale)).all()


def test_which_tensors_are_quantized_and_their_bytes():
    export = ExportConfig()
    big = TensorSpec("mlps.0.fc.weight", (1024, 512), "matrix")
    small = TensorSpec("layers.0.attn_scale", (512,), "scalar")
    tiny_matrix = TensorSpec("attns.0.c_k.weight", (16, 16), "matrix")
    assert is_quantized(big, export) and not is_quantized(small, export) and not is_quantized(tiny_matrix, export)
    assert stored_bytes(big, export) == 1024 * 512 + 1024 * 2
    assert stored_bytes(small, export) == 512 * 2
    assert stored_bytes(tiny_matrix, export) == 256 * 2


def test_embedding_bits_apply_to_the_embedding_only_and_16_keeps_it_float():
    emb = TensorSpec("tok_emb.weight", (1024, 512), "embedding")
    fc = TensorSpec("mlps.0.fc.weight", (1024, 512), "matrix")
    same = ExportConfig(quant_bits=6)
    assert bits_for(emb, same) == bits_for(fc, same) == 6
    wide = ExportConfig(quant_bits=6, embedding_bits=8)
    assert bits_for(emb, wide) == 8 and bits_for(fc, wide) == 6
    assert stored_bytes(emb, wide) == stored_bytes(fc, wide)  # every code sits in an int8 container
    floats = ExportConfig(quant_bits=6, embedding_bits=16)
    assert not is_quantized(emb, floats) and is_quantized(fc, floats)
    assert stored_bytes(emb, floats) == 1024 * 512 * 2


def test_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows(torch.zeros(5), 8, 1.0)
