"""Decoupled weight decay (train.muon_weight_decay, train.adam_weight_decay): one step on a known gradient."""
from __future__ import annotations

import pytest
import torch

from trainer import run_config as config
from trainer.model import GPT
from trainer.optim import Muon, build_optimizers, orthogonalize, parameter_groups

TINY = config.ModelConfig(vocab_size=64, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0, unique_blocks=2)


def test_muon_decays_then_takes_its_orthogonalized_step():
    torch.manual_seed(0)
    p0, grad = torch.randn(6, 4), torch.randn(6, 4)
    lr, wd, momentum = 0.1, 0.5, 0.9
    param = torch.nn.Parameter(p0.clone())
    param.grad = grad.clone()
    Muon([param], lr=lr, momentum=momentum, backend_steps=5, weight_decay=wd).step()
    # First step: the momentum buffer is the gradient, Nesterov looks one momentum ahead; a tall matrix's
    # update is scaled by sqrt(rows / cols).
    update = (orthogonalize((grad + momentum * grad)[None], 5)[0] * (6 / 4) ** 0.5).float()  # bf16, as Muon
    assert torch.allclose(param.data, p0 * (1 - lr * wd) - lr * update, rtol=1e-6, atol=1e-7)
    undecayed = torch.nn.Parameter(p0.clone())
    undecayed.grad = grad.clone()
    Muon([undecayed], lr=lr, momentum=momentum, backend_steps=5).step()
    assert torch.allclose(param.data - undecayed.data, -lr * wd * p0, atol=1e-6)


def test_the_adam_groups_become_adamw_and_decay_once_per_step():
    torch.manual_seed(0)
    model = GPT(TINY)
    tc = config.TrainConfig(adam_weight_decay=0.04, muon_weight_decay=0.04, embed_lr=0.05, scalar_lr=0.02,
                            matrix_lr=0.03)
    embeddings, matrices, scalars = parameter_groups(model)
    optimizers = build_optimizers(model, tc)
    assert [type(o).__name__ for o in optimizers] == ["AdamW", "Muon", "AdamW"]
    before = {id(p): p.detach().clone() for p in model.parameters()}
    grads = {id(p): torch.randn_like(p) for p in model.parameters()}
    for p in model.parameters():
        p.grad = grads[id(p)].clone()
    for opt in optimizers:
        opt.step()
    for params, lr in ((embeddings, 0.05), (scalars, 0.02)):
        for p in params:
            g, p0 = grads[id(p)], before[id(p)]
            # Adam's first step is lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps).
            expected = p0 * (1 - lr * 0.04) - lr * g / (g.abs() + tc.adam_eps)
            assert torch.allclose(p.detach(), expected, rtol=1e-5, atol=1e-7)
    assert optimizers[1].param_groups[0]["weight_decay"] == 0.04


def test_without_weight_decay_the_optimizers_are_as_before():
    optimizers = build_optimizers(GPT(TINY), config.TrainConfig())
    assert [type(o) for o in optimizers] == [torch.optim.Adam, Muon, torch.optim.Adam]
    assert optimizers[1].param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("key", ["muon_weight_decay", "adam_weight_decay"])
def test_weight_decay_is_validated(key):
    with pytest.raises(config.ConfigError, match=f"train.{key}: -0.1 must be in"):
        config.TrainConfig(**{key: -0.1}).validate()
