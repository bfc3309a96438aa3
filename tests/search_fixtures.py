"""Helpers for the search tests: a tiny space file, tiny search settings, and a local Ray session."""
from __future__ import annotations

from pathlib import Path

import yaml

from search.settings import SearchSettings

# A tiny CPU model/training; the search varies blocks, schedule and width. The d2048 width is far over
# 16,000,000 bytes, so the size gate has something to reject.
TINY_BASE = {
    "model": {"vocab_size": 320, "mlp_mult": 2.0},
    "train": {
        "seq_len": 32, "batch_tokens": 256, "micro_batch_tokens": 256, "max_steps": 1_000_000,
        "warmdown_steps": 4, "compile": False, "compile_warmup_steps": 0, "val_prefix_tokens": 256,
        "val_batch_tokens": 2048, "final_val_tokens": 2049, "log_every_steps": 1000,
        "matrix_lr": 0.02, "scalar_lr": 0.02, "embed_lr": 0.03,
    },
    "export": {},
}
TINY_SPACE = {
    "name": "tiny-test",
    "description": "tiny CPU space for the search tests",
    "base": TINY_BASE,
    "unique_blocks": [1, 2],
    "patterns": {"none": {}, "cycle": {"repeats": [2]}},
    "head_dim": 8,
    "kv_ratio": 2,
    "width": [16, 32, 2048],
    "untie_mlp": ["none", "full"],
    "embedding_bits": [0, 16],  # a parameter chosen after the others, through Tune and Optuna
}


def write_space(folder: Path, space: dict | None = None) -> Path:
    """Write the tiny space YAML (or another mapping) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny_space.yaml"
    path.write_text(yaml.safe_dump(space or TINY_SPACE, sort_keys=False))
    return path


def tiny_settings(storage: Path, corpus: dict, space: Path, name: str, **changes) -> SearchSettings:
    """Settings for a local CPU search over the tiny space: ~1.5 s of training per trial, rungs at 0.5 s and 1 s."""
    values = dict(
        name=name, space=str(space), storage=str(storage), data_dir=str(corpus["data"]),
        tokenizer=str(corpus["tokenizer"]), trials=8, gpus_per_trial=0.0, cpus_per_trial=1.0,
        max_concurrent=2, budget_s=1.5, grace_s=0.5, reduction_factor=2.0, seed=0, ray_address="local",
    )
    values.update(changes)
    return SearchSettings(**values).validate()


def run_local_search(settings: SearchSettings) -> SearchSettings:
    """Run the whole search on a fresh local Ray instance, shut down afterwards; return the settings."""
    import ray

    from search.tune import tuner

    tuner.connect("local")
    try:
        tuner.run_search(settings)
    finally:
        ray.shutdown()
    return settings


def cli_env() -> dict:
    """Environment for `python tests/search_fixtures.py ...` driver subprocesses."""
    import os

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)
    return env


if __name__ == "__main__":
    # `python tests/search_fixtures.py run ...`: the search CLI as a driver process of its own.
    import sys

    from search.cli import main

    sys.exit(main(sys.argv[1:]))
