"""The training run: budgeted training, full evaluation, export and round trip; one entry point for every caller.

`python -m trainer train` and every other caller (with Hooks of its own, or under torchrun) call train(); its
steps are the Trainer's (trainer.trainer), in this order.
"""
from __future__ import annotations

from pathlib import Path

from trainer.hooks import Hooks
from trainer.metrics import RunMetrics
from trainer.run_config import RunConfig
from trainer.trainer import Trainer


def train(
    cfg: RunConfig,
    data_dir: Path,
    tokenizer_path: Path,
    out_dir: Path,
    *,
    hooks: Hooks | None = None,
    resume_from: Path | None = None,
    device: str | None = None,
    echo: bool = True,
    save_weights: bool = False,
) -> RunMetrics:
    """Train within cfg.train.budget_s, evaluate, export the artifact; write metrics.json and return the metrics.

    hooks: the caller's reports, early stop and wait before training (trainer.hooks; none by default).
    resume_from: a folder a report's save_checkpoint wrote; training goes on from there.
    save_weights: also write the trained float weights to out_dir/weights.pt, for `trainer export`.
    """
    return run(Trainer(cfg, data_dir, tokenizer_path, out_dir, hooks, device, echo, save_weights), resume_from)


def run(trainer: Trainer, resume_from: Path | None = None) -> RunMetrics:
    """A built Trainer's steps in order: warm up, resume, fit, export, write metrics.json; the metrics."""
    trainer.warm_up_and_wait()
    if resume_from is not None:
        trainer.resume(resume_from)
    trainer.fit()
    metrics = trainer.export()
    trainer.write_metrics(metrics)
    return metrics
