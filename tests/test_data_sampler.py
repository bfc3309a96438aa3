"""Shuffled training windows (train.data_order: shuffled): each window once per pass, disjoint ranks, seeded and
resumable; the trainer trains on them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer import run_config as config
from trainer.data.sampler import ShuffledWindows
from trainer.data.shards import DistributedBatches, ShardError, TokenStream, write_shard

CPU = torch.device("cpu")
SEQ = 8


@pytest.fixture
def shards(tmp_path):
    """Three shards of distinct tokens: 41 tokens (5 windows of 8 + a target), 17 (2), 8 (0: too short)."""
    sizes, start = (41, 17, 8), 0
    for i, n in enumerate(sizes):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(start, start + n) % 1000)
        start += n
    return tmp_path


def every_window(data_dir) -> set[tuple[int, ...]]:
    """Each shard's consecutive windows of SEQ + 1 tokens, read straight from the files."""
    found = set()
    for path in sorted(data_dir.glob("fineweb_train_*.bin")):
        tokens = np.fromfile(path, dtype="<u2", offset=1024).tolist()
        found |= {tuple(tokens[k * SEQ : k * SEQ + SEQ + 1]) for k in range((len(tokens) - 1) // SEQ)}
    return found


def rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, ...]]:
    """Each (input, target) row back as its SEQ + 1 tokens, checking the target is the input shifted by one."""
    assert torch.equal(x[:, 1:], y[:, :-1])
    return [tuple(x[i].tolist()) + (int(y[i, -1]),) for i in range(len(x))]


def test_a_pass_draws_every_window_once(shards):
    sampler = ShuffledWindows(shards, 1000, SEQ, seed=3, rank=0, world_size=1, device=CPU)
    drawn = []
    for _ in range(7):  # 7 windows in all, one a batch
        drawn += rows(*sampler.next(SEQ, SEQ))
    assert len(drawn) == 7 and set(drawn) == every_window(shards)
    assert sampler.state() == {"epoch": 0, "cursor": 7}
    nxt = rows(*sampler.next(SEQ, SEQ))  # the next pass starts with a new permutation
    assert sampler.state() == {"epoch": 1, "cursor": 1} and nxt[0] in every_window(shards)


def test_the_order_is_random_but_seeded(shards):
    def order(seed):
        sampler = ShuffledWindows(shards, 1000, SEQ, seed=seed, rank=0, world_size=1, device=CPU)
        return rows(*sampler.next(7 * SEQ, SEQ))

    assert order(3) == order(3)
    assert order(3) != order(4)
    in_file_order = sorted(every_window(shards))
    assert sorted(order(3)) == in_file_order and any(order(s) != in_file_order for s in (3, 4))


def test_ranks_split_each_global_batch_without_overlap(shards):
    one = ShuffledWindows(shards, 1000, SEQ, seed=5, rank=0, world_size=1, device=CPU)
    ranks = [ShuffledWindows(shards, 1000, SEQ, seed=5, rank=r, world_size=2, device=CPU) for r in (0, 1)]
    whole = rows(*one.next(4 * SEQ, SEQ))  # the global batch of 4 windows
    halves = [rows(*s.next(2 * SEQ, SEQ)) for s in ranks]
    assert halves[0] == whole[0::2] and halves[1] == whole[1::2]


def test_a_restored_position_continues_the_same_draw(shards):
    sampler = ShuffledWindows(shards, 1000, SEQ, seed=9, rank=0, world_size=1, device=CPU)
    for _ in range(9):  # into the second pass
        sampler.next(SEQ, SEQ)
    saved = sampler.state()
    expected = [rows(*sampler.next(SEQ, SEQ)) for _ in range(6)]
    fresh = ShuffledWindows(shards, 1000, SEQ, seed=9, rank=0, world_size=1, device=CPU)
    fresh.restore(saved)
    assert [rows(*fresh.next(SEQ, SEQ)) for _ in range(6)] == expected


def test_positions_of_the_other_order_are_refused(shards):
    sampler = ShuffledWindows(shards, 1000, SEQ, seed=1, rank=0, world_size=1, device=CPU)
    stream = DistributedBatches(TokenStream(shards, 1000), 0, 1, CPU)
    with pytest.raises(ValueError, match="data order it was saved with"):
        sampler.restore(stream.state())
    with pytest.raises(ValueError, match="data order it was saved with"):
        stream.restore(sampler.state())


def test_shards_shorter_than_a_window_are_refused(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(5))
    with pytest.raises(ShardError, match="no train shard holds 9 tokens"):
        ShuffledWindows(tmp_path, 1000, SEQ, seed=1, rank=0, world_size=1, device=CPU)


def test_data_order_is_validated(tiny_config_dict):
    tiny_config_dict["train"]["data_order"] = "random"
    with pytest.raises(config.ConfigError, match="train.data_order"):
        config.from_dict(tiny_config_dict)


def test_the_trainer_trains_on_shuffled_windows(tiny_corpus, tiny_config_dict, tmp_path):
    from tests.trainer_runs import build

    tiny_config_dict["train"].update(data_order="shuffled", max_steps=3)
    trainer = build(tiny_corpus, tiny_config_dict, tmp_path)
    assert isinstance(trainer.batches, ShuffledWindows)
    x, _ = trainer.batches.next(trainer.local_tokens, trainer.tc.seq_len)
    stream = DistributedBatches(TokenStream(tiny_corpus["data"], trainer.cfg.model.vocab_size), 0, 1, CPU)
    xs, _ = stream.next(trainer.local_tokens, trainer.tc.seq_len)
    assert not torch.equal(x, xs)  # not the shards' first tokens in order
    trainer.warm_up_and_wait()
    trainer.fit()
    assert trainer.step == 3 and trainer.batches.state()["cursor"] > 0
