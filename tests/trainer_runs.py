"""Running the Trainer step by step in tests, with components that record what training did at each step."""
from __future__ import annotations

import torch

from trainer import run_config as config
from trainer import train
from trainer.components import Component
from trainer.trainer import Trainer

# A tiny looped model: blocks 0, 1 run twice; the repeats (positions 2 and 3) have MLPs of their own.
LOOPED = {"virtual_layers": [0, 1, 0, 1], "untie_mlp": [2, 3]}


class Probe(Component):
    """Records, before each step, the model's recurrence mode and whether fake quantization is on, and after each
    step a float32 copy of the weights."""

    def __init__(self):
        self.modes, self.quantized, self.weights, self.scales = [], [], {}, []

    def before_step(self, trainer, step, train_s, lr_scale):
        self.modes.append(trainer.model.recurrence_active)
        fake = trainer.model.mlps[0].fc.fake_quant
        self.quantized.append(bool(fake.on) if fake is not None else False)

    def after_step(self, trainer, step, lr_scale):
        self.weights[step] = {k: v.detach().float().clone() for k, v in trainer.model.state_dict().items()}
        self.scales.append(lr_scale)


def component(trainer: Trainer, kind: type) -> Component:
    """The trainer's one component of a class."""
    (found,) = [c for c in trainer.components if isinstance(c, kind)]
    return found


def build(tiny_corpus, cfg_dict: dict, out, hooks=None, save_weights: bool = False) -> Trainer:
    """A CPU Trainer for a config dict, with a Probe appended to its components."""
    cfg = config.from_dict(cfg_dict)
    trainer = Trainer(cfg, tiny_corpus["data"], tiny_corpus["tokenizer"], out, hooks=hooks, device="cpu",
                      echo=False, save_weights=save_weights)
    trainer.components.append(Probe())
    return trainer


def run(tiny_corpus, cfg_dict: dict, out, hooks=None, save_weights: bool = False, resume_from=None):
    """Train, export and write the metrics through trainer.train.run; (trainer, metrics, probe)."""
    trainer = build(tiny_corpus, cfg_dict, out, hooks, save_weights)
    metrics = train.run(trainer, resume_from)
    return trainer, metrics, component(trainer, Probe)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state_dicts hold the same names and exactly equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
