"""Late QAT (train.late_qat_lr_scale): the block matrices forward on the export's grid with a straight-through
gradient, from exactly the first step below the LR scale, and never during evaluation."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.trainer_runs import build, component, run
from trainer import run_config as config
from trainer.components import Component
from trainer.model import GPT, CastedLinear
from trainer.qat import FakeQuant, LateQAT, attach, quantized_values
from trainer.quant import dequantize_rows, quantize_rows
from trainer.schedule import tensor_layout

TINY = dict(vocab_size=64, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0, unique_blocks=2,
            virtual_layers=(0, 1, 0, 1), untie_mlp=(2, 3), bigram_buckets=16, bigram_dim=8)


def trained_looking(seed: int = 0) -> GPT:
    """A tiny GPT whose zero-initialised projections hold values too, so every matrix has a real grid."""
    torch.manual_seed(seed)
    model = GPT(config.ModelConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, 17), generator=g)
    return ids[:, :-1], ids[:, 1:]


def quantized_model(model: GPT, bits: int) -> GPT:
    """A copy whose block matrices hold what the export reads back at `bits` (rows clipped at their max)."""
    copied = copy.deepcopy(model)
    matrices = {s.name for s in tensor_layout(copied.cfg) if s.role == "matrix"}
    with torch.no_grad():
        for name, module in copied.named_modules():
            if isinstance(module, CastedLinear) and f"{name}.weight" in matrices:
                module.weight.copy_(dequantize_rows(*quantize_rows(module.weight, bits, 1.0)))
    return copied


def test_quantized_values_are_the_export_grid():
    w = torch.randn(6, 10)
    assert torch.equal(quantized_values(w, 5), dequantize_rows(*quantize_rows(w, 5, 1.0)))
    scale = w.abs().amax(dim=1, keepdim=True) / 15
    assert torch.allclose(quantized_values(w, 5), torch.round(w / scale).clamp(-15, 15) * scale, rtol=1e-3, atol=1e-4)


def test_fake_quantization_covers_exactly_the_block_matrices():
    model = trained_looking()
    names = attach(model, FakeQuant(6, torch.device("cpu")))
    matrices = {s.name for s in tensor_layout(model.cfg) if s.role == "matrix"}
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, CastedLinear)}
    assert set(names) == matrices & linears and "mlps.3.proj.weight" in names
    assert "bigram.proj.weight" in matrices and "bigram.proj.weight" not in names  # a plain nn.Linear


@pytest.mark.parametrize("bits", [5, 6, 8])
def test_forward_equals_the_model_on_dequantized_weights(bits):
    model, (x, y) = trained_looking(), batch()
    reference = quantized_model(model, bits)
    fake = FakeQuant(bits, torch.device("cpu"))
    attach(model, fake)
    plain = model(x, y)
    assert torch.equal(plain, copy.deepcopy(model).requires_grad_(False)(x, y))  # off: the float weights
    fake.on.fill_(True)
    assert torch.equal(model(x, y), reference(x, y)) and not torch.equal(model(x, y), plain)


def test_the_gradient_passes_straight_through():
    model, (x, y) = trained_looking(), batch()
    reference, plain = quantized_model(model, 6), copy.deepcopy(model)
    fake = FakeQuant(6, torch.device("cpu"))
    attach(model, fake)
    fake.on.fill_(True)
    model(x, y).backward()
    reference(x, y).backward()
    # Each float weight gets the gradient the quantized model's weight gets: d(quantize)/dw counts as 1.
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name
    fake.on.fill_(False)
    model.zero_grad()
    model(x, y).backward()
    plain(x, y).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_qat_switches_on_at_the_first_step_below_the_scale(tiny_corpus, tiny_config_dict, tmp_path):
    # 12 steps, a 4-step warmdown: steps 8..11 (from 0) at LR scales 1, 0.75, 0.5, 0.25.
    tiny_config_dict["train"].update(late_qat_lr_scale=0.6, late_qat_bits=5, max_steps=12, warmdown_steps=4,
                                     budget_s=1000.0)
    trainer, metrics, probe = run(tiny_corpus, tiny_config_dict, tmp_path)
    qat = component(trainer, LateQAT)
    assert probe.scales[8:] == [1.0, 0.75, 0.5, 0.25]
    assert qat.start_step == 10 and probe.quantized == [False] * 10 + [True] * 2
    assert "late QAT on from step 10 (LR scale 0.5000 < 0.6)" in (tmp_path / "train.log").read_text()
    # Off once training ends: the final evaluations and the export see the float weights.
    assert not bool(qat.fake_quant.on) and metrics.steps == 12


class SeenInEval(Component):
    """Records whether fake quantization is on while an evaluation runs."""

    def __init__(self, fake: FakeQuant):
        self.fake, self.seen = fake, []

    def before_eval(self, trainer):
        self.seen.append(bool(self.fake.on))


def test_evaluations_during_qat_score_the_float_weights(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(late_qat_lr_scale=0.6)
    trainer = build(tiny_corpus, tiny_config_dict, tmp_path)
    qat = component(trainer, LateQAT)
    qat.before_step(trainer, 0, 0.0, 0.5)
    assert bool(qat.fake_quant.on) and qat.start_step == 0
    seen = SeenInEval(qat.fake_quant)
    trainer.components.insert(trainer.components.index(qat) + 1, seen)
    trainer.evaluate()
    assert seen.seen == [False] and bool(qat.fake_quant.on)  # off while scoring, on again after


def test_switching_qat_on_recompiles_nothing():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, (x, y) = trained_looking(), batch()
    fake = FakeQuant(6, torch.device("cpu"))
    attach(model, fake)
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)  # Dynamo's graph, no C++ compiler needed
    off = compiled(x, y)
    fake.on.fill_(True)
    on = compiled(x, y)
    assert counters["stats"]["unique_graphs"] == 1  # the switch is a tensor the graph reads, not a guard
    assert torch.equal(on, model(x, y)) and not torch.equal(on, off)
    torch._dynamo.reset()
