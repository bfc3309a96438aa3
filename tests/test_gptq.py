"""GPTQ: output error against round-to-nearest, the Hessians it is fed, and the calibration text it reads."""
import pytest
import torch

from tests.weights import trained_like
from trainer import run_config as config
from trainer.data.shards import TokenStream
from trainer.gptq import (
    CLIP_QUANTILES,
    calibration_batches,
    collect_hessians,
    generate_calibration,
    output_error_rows,
    quantize_gptq,
)
from trainer.model import CastedLinear
from trainer.quant import dequantize_rows, qmax, quantize_rows, round_rows, row_scales
from trainer.trainer import build_model


def correlated_layer(rows=48, cols=96, samples=4096, seed=0):
    """A weight and inputs X = Z A whose columns are strongly correlated (A a random mixing matrix)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen) / cols**0.5
    mixing = torch.randn(cols, cols, generator=gen) + 3.0 * torch.randn(1, cols, generator=gen)
    x = torch.randn(samples, cols, generator=gen) @ mixing
    return weight, x, x.T @ x / samples


def output_error(x, weight, codes, scale):
    return (x @ weight.T - x @ dequantize_rows(codes, scale).T).norm().item()


def rtn_at_best_clip(weight, bits, hessian):
    """Round-to-nearest, each row at the candidate clip with the least output error under `hessian`."""
    codes = torch.stack([round_rows(weight, row_scales(weight, bits, q), bits) for q in CLIP_QUANTILES])
    scales = torch.stack([row_scales(weight, bits, q) for q in CLIP_QUANTILES])
    errors = torch.stack([output_error_rows(weight, c, s, hessian) for c, s in zip(codes, scales)])
    best = errors.argmin(dim=0)
    rows = torch.arange(weight.shape[0])
    return codes[best, rows], scales[best, rows]


@pytest.mark.parametrize("bits", [5, 6])
def test_gptq_lowers_the_output_error_of_round_to_nearest_on_correlated_inputs(bits):
    weight, x, hessian = correlated_layer()
    codes, scale = quantize_gptq(weight, hessian, bits)
    gptq = output_error(x, weight, codes, scale)
    rtn = output_error(x, weight, *quantize_rows(weight, bits, 0.99999))
    rtn_best_clip = output_error(x, weight, *rtn_at_best_clip(weight, bits, hessian))
    assert gptq < 0.7 * rtn_best_clip < 0.7 * rtn * 1.0001
    # The figure it minimises is the layer's output error: tr((W - Q) H (W - Q)^T) = ||X (W - Q)^T||^2 / samples.
    by_trace = output_error_rows(weight, codes, scale, hessian).sum().item()
    assert by_trace == pytest.approx(gptq**2 / x.shape[0], rel=1e-3)


@pytest.mark.parametrize("bits", [5, 6, 8])
def test_codes_stay_on_the_grid_and_in_our_row_format(bits):
    weight, _, hessian = correlated_layer(rows=20, cols=40)
    weight[3, 7] = 25.0  # an outlier: clipped rows push error into it, never past the grid
    codes, scale = quantize_gptq(weight, hessian, bits, block_size=16)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float16
    assert codes.shape == weight.shape and scale.shape == (20,)
    assert codes.abs().max().item() <= qmax(bits)
    assert dequantize_rows(codes, scale).shape == weight.shape


def test_an_identity_hessian_gives_round_to_nearest_at_each_rows_best_clip():
    # No correlation between inputs: nothing to compensate, so GPTQ rounds each weight to nearest, and the clip
    # it keeps per row is the one with the least squared weight error.
    weight, _, _ = correlated_layer(rows=32, cols=64)
    identity = torch.eye(64)
    codes, scale = quantize_gptq(weight, identity, 5, block_size=16)
    expected_codes, expected_scale = rtn_at_best_clip(weight, 5, identity)
    assert torch.equal(codes, expected_codes) and torch.equal(scale, expected_scale)


def test_a_singular_hessian_falls_back_to_round_to_nearest():
    # Fewer samples than inputs and no damping: H is singular, the Cholesky factor does not exist.
    weight, x, _ = correlated_layer(rows=16, cols=64, samples=8)
    hessian = x.T @ x / 8
    codes, scale = quantize_gptq(weight, hessian, 6, damp=0.0)
    expected_codes, expected_scale = rtn_at_best_clip(weight, 6, hessian)
    assert torch.equal(codes, expected_codes) and torch.equal(scale, expected_scale)
    nan = hessian.clone()
    nan[0, 0] = float("nan")
    codes, scale = quantize_gptq(weight, nan, 6)
    assert torch.equal(codes, rtn_at_best_clip(weight, 6, torch.eye(64))[0])  # no usable H: weight error


def test_inputs_that_are_never_active_get_zero_weights_and_do_not_disturb_the_rest():
    weight, x, _ = correlated_layer(rows=16, cols=32)
    x[:, [3, 17]] = 0.0
    hessian = x.T @ x / x.shape[0]
    codes, scale = quantize_gptq(weight, hessian, 6)
    assert torch.all(codes[:, [3, 17]] == 0)
    rtn = output_error(x, weight, *quantize_rows(weight, 6, 0.99999))
    assert output_error(x, weight, codes, scale) < rtn


def test_gptq_leaves_the_weight_it_reads_untouched():
    weight, _, hessian = correlated_layer(rows=8, cols=16)
    before = weight.clone()
    quantize_gptq(weight, hessian, 5)
    assert torch.equal(weight, before)


def tiny_model(tiny_config_dict, **model):
    data = tiny_config_dict
    data["model"].update(model)
    cfg = config.from_dict(data)
    return cfg, trained_like(lambda: build_model(cfg, torch.device("cpu")))


def test_collect_hessians_equals_x_transpose_x_of_the_inputs_captured_by_hand(tiny_config_dict):
    cfg, model = tiny_model(tiny_config_dict, virtual_layers=[0, 1, 0, 1])  # block 0 and its MLP run twice
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg.model.vocab_size, (3, 16), generator=gen) for _ in range(2)]
    captured = {}
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: captured.setdefault(name, []).append(
        args[0].detach().reshape(-1, args[0].shape[-1]))) for name, module in model.named_modules()
        if isinstance(module, CastedLinear)]
    with torch.no_grad():
        for batch in batches:
            model.hidden(batch)
    for hook in hooks:
        hook.remove()
    hessians = collect_hessians(model, batches)
    assert set(hessians) == {f"{name}.weight" for name in captured}
    assert len(captured["attns.0.c_q"]) == 2 * len(batches)  # the shared block, once per virtual position
    for name, inputs in captured.items():
        x = torch.cat(inputs)
        assert x.shape[0] == len(inputs) * 3 * 16
        torch.testing.assert_close(hessians[f"{name}.weight"], x.T @ x / x.shape[0], rtol=1e-5, atol=1e-6)
    assert not any(module._forward_pre_hooks for module in model.modules())  # hooks removed
    assert model.training  # mode restored


def test_calibration_batches_read_the_stream_in_order(tiny_corpus):
    stream = TokenStream(tiny_corpus["data"], tiny_corpus["vocab_size"])
    batches = calibration_batches(stream, count=3, batch_tokens=100, seq_len=32)  # 3 sequences of 32 per batch
    again = TokenStream(tiny_corpus["data"], tiny_corpus["vocab_size"]).take(3 * 96)
    assert [tuple(b.shape) for b in batches] == [(3, 32)] * 3 and batches[0].dtype == torch.int64
    assert torch.equal(torch.cat([b.reshape(-1) for b in batches]), torch.from_numpy(again.astype("int64")))


def test_generated_calibration_samples_the_models_own_next_token_distribution(tiny_config_dict):
    cfg, model = tiny_model(tiny_config_dict)
    batches = generate_calibration(model, count=2, batch_tokens=48, seq_len=12, temperature=0.8, seed=3)
    assert [tuple(b.shape) for b in batches] == [(4, 12)] * 2
    assert all(0 <= b.min() and b.max() < cfg.model.vocab_size for b in batches)
    assert all(torch.equal(a, b) for a, b in zip(batches, generate_calibration(model, 2, 48, 12, 0.8, seed=3)))
    # Near zero temperature the sample is the argmax: each token is the model's top choice after its prefix.
    greedy = generate_calibration(model, count=1, batch_tokens=24, seq_len=8, temperature=1e-4, seed=0)[0]
    with torch.no_grad():
        top = model.logits(greedy).argmax(dim=-1)
    assert torch.equal(greedy[:, 1:], top[:, :-1])
