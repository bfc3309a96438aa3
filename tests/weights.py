"""Models whose every parameter has a trained model's scale, for the export, quantization and size tests."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def trained_like(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """build() after seeding, every parameter then drawn from N(0, 0.05): output projections, which start at zero,
    hold weights as after training."""
    torch.manual_seed(seed)
    model = build()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model
