"""Shuffled training windows (train.data_order: shuffled): each global batch is seq_len windows from anywhere in the
train shards, in a seeded random order, without replacement within a pass over the data.

The windows are the consecutive seq_len-token spans of each shard (plus one target token). Every pass draws a new
permutation of all of them from (seed, pass), so any rank, a rewind and a resumed run see the same order. Rank r
takes windows r, r + world_size, ... of each global draw, so the ranks' batches never overlap. A batch from
consecutive windows of one document region (the `stream` order) is correlated; one drawn across the whole corpus
is not, as in the leaderboard's records, whose loaders draw windows across shards.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.data.shards import TRAIN_GLOB, ShardError, load_tokens, shard_paths


class ShuffledWindows:
    """Seeded shuffled seq_len windows over all train shards, split across ranks; the DistributedBatches interface."""

    def __init__(self, data_dir: Path, vocab_size: int, seq_len: int, seed: int, rank: int, world_size: int,
                 device: torch.device):
        self.shards = [load_tokens(p, vocab_size) for p in shard_paths(data_dir, TRAIN_GLOB)]
        # Window k of shard i covers tokens [k * seq_len, (k + 1) * seq_len], its last token the last target.
        counts = np.array([max(len(t) - 1, 0) // seq_len for t in self.shards], dtype=np.int64)
        if counts.sum() == 0:
            raise ShardError(f"{data_dir}: no train shard holds {seq_len + 1} tokens, one window of "
                             "train.seq_len; use more data or a shorter train.seq_len")
        self.shard_of = np.repeat(np.arange(len(self.shards), dtype=np.int32), counts)
        self.index_in_shard = np.concatenate([np.arange(c, dtype=np.int32) for c in counts])
        self.seq_len, self.seed = seq_len, seed
        self.rank, self.world_size, self.device = rank, world_size, device
        self.epoch, self.cursor = 0, 0
        self.order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shard_of))

    def state(self) -> dict[str, int]:
        """Where the draw is, for checkpoints and rewinds."""
        return {"epoch": self.epoch, "cursor": self.cursor}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        if "epoch" not in state:
            raise ValueError("the saved data position is a token stream's (train.data_order: stream); resume with "
                             "the data order it was saved with")
        if int(state["epoch"]) != self.epoch:
            self.order = self._permutation(int(state["epoch"]))
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def _draw(self, n: int) -> list[int]:
        """The next n windows of the global order, starting a new pass when this one runs out."""
        drawn = []
        while len(drawn) < n:
            if self.cursor == len(self.order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self._permutation(self.epoch)
            take = min(n - len(drawn), len(self.order) - self.cursor)
            drawn.extend(self.order[self.cursor : self.cursor + take].tolist())
            self.cursor += take
        return drawn

    def next(self, local_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of shape (local_tokens // seq_len, seq_len) for this rank."""
        if seq_len != self.seq_len or local_tokens % seq_len:
            raise ValueError(f"batches of {local_tokens} tokens in windows of {seq_len}: this sampler draws whole "
                             f"windows of {self.seq_len}")
        windows = self._draw(local_tokens // seq_len * self.world_size)[self.rank :: self.world_size]
        rows = [self.shards[self.shard_of[w]][int(self.index_in_shard[w]) * seq_len :][: seq_len + 1] for w in windows]
        local = torch.from_numpy(np.stack(rows).astype(np.int64))
        pinned = local.pin_memory() if self.device.type == "cuda" else local
        local = pinned.to(self.device, non_blocking=True)
        return local[:, :-1], local[:, 1:]
