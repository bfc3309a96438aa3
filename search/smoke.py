"""`--smoke` for searches and reruns: the same code path at a size a laptop's CPU runs in minutes.

Every trial's config gets trainer.run_config.smoke_version's train settings (short sequences, tiny batches, a val
prefix, few steps), passed as --set overrides ahead of the user's own so those still win; the model shapes stay
the space's, so the size gate and the frontier mean what they do at full scale. Without --data/--tokenizer the
embedded corpus (trainer.data.smoke) is used, built on first use with no network.
"""
from __future__ import annotations

import json

from trainer.run_config import RunConfig, apply_overrides, from_dict, smoke_version

TRIALS = 4
BUDGET_S = 20.0
# zstd level 22 takes seconds per MB on a CPU; the artifact is always the smaller of this level and level 1.
EXPORT_OVERRIDES = ("export.zstd_level=1",)


def smoke_overrides(base: RunConfig) -> list[str]:
    """--set items that turn base's train section into smoke_version's (the budget is the search's own)."""
    small = smoke_version(base)
    changed = []
    for key, value in small.train.__dict__.items():
        if key != "budget_s" and getattr(base.train, key) != value:
            changed.append(f"train.{key}={json.dumps(value)}")
    return changed + list(EXPORT_OVERRIDES)


def space_base_config(space, overrides: list[str]) -> RunConfig:
    """The space's first point with the given --set items applied: every trial's train settings but the knobs',
    and a valid model (a base alone may lack what the patterns set, e.g. depths its value embeddings name)."""
    first = space.build(next(space.assignments()))
    return from_dict(apply_overrides(first.to_dict(), overrides), where=f"{getattr(space, 'path', 'space')} base")


def embedded_data(progress=print) -> tuple[str, str]:
    """(data folder, tokenizer) of the embedded smoke corpus, built on first use."""
    from trainer.data.smoke import smoke_data

    found = smoke_data(progress=progress)
    return str(found.data_dir), str(found.tokenizer)
