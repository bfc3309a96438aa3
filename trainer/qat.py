"""Late quantization-aware training: near the end, the block matrices train on the values the export will store.

From the first step whose LR scale is below train.late_qat_lr_scale, every CastedLinear weight of role "matrix"
runs forward on its per-row symmetric grid at train.late_qat_bits (trainer.quant's: each row clipped at its max
|w|, fp16 scales), while its gradient passes straight through to the float weight. Evaluations score the float
weights. The switch is a tensor the compiled graph reads, so switching on recompiles nothing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainer.components import Component
from trainer.model import GPT, CastedLinear
from trainer.quant import dequantize_rows, round_rows, row_scales
from trainer.schedule import tensor_layout

if TYPE_CHECKING:
    from trainer.trainer import Trainer

ROW_MAX = 1.0  # clip quantile: each row's largest |w| lands on the grid's largest code


def quantized_values(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The float32 values the per-row `bits` grid stores for a 2-D weight (what dequantize_rows reads back)."""
    w = weight.detach().float()
    scale = row_scales(w, bits, ROW_MAX)
    return dequantize_rows(round_rows(w, scale, bits), scale)


class FakeQuant:
    """CastedLinear.fake_quant: the weight's quantized values while `on`, the weight itself otherwise; either way
    the gradient of the identity (straight-through)."""

    def __init__(self, bits: int, device: torch.device):
        self.bits = bits
        self.on = torch.zeros((), dtype=torch.bool, device=device)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        chosen = torch.where(self.on, quantized_values(weight, self.bits), weight.detach())
        return chosen + (weight - weight.detach())  # adds exactly 0 forward, the identity backward


def attach(model: GPT, fake_quant: FakeQuant | None) -> list[str]:
    """Set fake_quant on every block-matrix CastedLinear of the model (None: detach); their weights' names."""
    matrices = {spec.name for spec in tensor_layout(model.cfg) if spec.role == "matrix"}
    names = []
    for name, module in model.named_modules():
        if isinstance(module, CastedLinear) and f"{name}.weight" in matrices:
            module.fake_quant = fake_quant
            names.append(f"{name}.weight")
    return names


class LateQAT(Component):
    """Fake quantization of the block matrices from the first step below an LR scale to the end of training."""

    def __init__(self, model: GPT, below_lr_scale: float, bits: int):
        self.below_lr_scale, self.bits = below_lr_scale, bits
        self.fake_quant = FakeQuant(bits, model.tok_emb.weight.device)
        self.names = attach(model, self.fake_quant)
        self.start_step: int | None = None
        self.training = True  # False once training has ended: evaluations and the export see float weights

    def before_step(self, trainer: "Trainer", step: int, train_s: float, lr_scale: float) -> None:
        if self.start_step is None and trainer.any_rank(lr_scale < self.below_lr_scale):
            self.start_step = step
            self.fake_quant.on.fill_(True)
            trainer.log(f"late QAT on from step {step} (LR scale {lr_scale:.4f} < {self.below_lr_scale}): "
                        f"{len(self.names)} matrices at int{self.bits}")

    def before_eval(self, trainer: "Trainer") -> None:
        self.fake_quant.on.fill_(False)

    def after_eval(self, trainer: "Trainer") -> None:
        self.fake_quant.on.fill_(self.training and self.start_step is not None)

    def on_train_end(self, trainer: "Trainer") -> None:
        self.training = False
        self.fake_quant.on.fill_(False)

    def state_dict(self) -> dict[str, Any]:
        return {"start_step": self.start_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_step = state["start_step"]
        self.fake_quant.on.fill_(self.training and self.start_step is not None)
