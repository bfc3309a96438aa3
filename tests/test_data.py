import numpy as np
import pytest
import torch

from trainer.data.shards import (
    HEADER_BYTES, DistributedBatches, ShardError, TokenStream, load_tokens, load_val_tokens, read_header, write_shard,
)


def test_write_then_read(tmp_path):
    tokens = np.arange(1000) % 700
    write_shard(tmp_path / "fineweb_train_000000.bin", tokens)
    assert read_header(tmp_path / "fineweb_train_000000.bin") == 1000
    assert np.array_equal(load_tokens(tmp_path / "fineweb_train_000000.bin", 1024), tokens)
    raw = (tmp_path / "fineweb_train_000000.bin").read_bytes()
    assert np.frombuffer(raw[:12], "<i4").tolist() == [20240520, 1, 1000] and len(raw) == HEADER_BYTES + 2000


def test_bad_magic_truncation_and_vocab_are_named(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(100))
    data = bytearray(path.read_bytes())
    data[0] = 7
    (tmp_path / "magic.bin").write_bytes(bytes(data))
    with pytest.raises(ShardError, match="magic"):
        read_header(tmp_path / "magic.bin")
    (tmp_path / "cut.bin").write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ShardError, match="truncated"):
        read_header(tmp_path / "cut.bin")
    (tmp_path / "short.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ShardError, match="shorter than"):
        read_header(tmp_path / "short.bin")
    with pytest.raises(ShardError, match="vocab_size 50"):
        load_tokens(path, vocab_size=50)


def test_missing_shards_say_how_to_get_them(tmp_path):
    with pytest.raises(ShardError, match="data download"):
        TokenStream(tmp_path, 1024)


def test_stream_crosses_shards_and_wraps(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(0, 10))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.arange(10, 15))
    stream = TokenStream(tmp_path, 100)
    assert stream.take(12).tolist() == list(range(12))
    state = stream.state()
    assert stream.take(5).tolist() == [12, 13, 14, 0, 1]
    stream.restore(state)
    assert stream.take(3).tolist() == [12, 13, 14]
    loaded = stream.tokens
    stream.restore({"shard_index": 1, "position": 1})  # a rewind within the loaded shard reads no file
    assert stream.tokens is loaded and stream.take(2).tolist() == [11, 12]


def test_ranks_take_disjoint_slices_with_shifted_targets(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(200))
    seen = []
    for rank in range(2):
        batches = DistributedBatches(TokenStream(tmp_path, 1000), rank, 2, torch.device("cpu"))
        x, y = batches.next(8, 4)
        assert x.shape == (2, 4) and torch.equal(y.flatten(), x.flatten() + 1)
        seen.append(x.flatten().tolist())
    assert seen == [list(range(0, 8)), list(range(9, 17))]


def test_val_prefix(tmp_path):
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(50))
    assert load_val_tokens(tmp_path, 100, max_tokens=20).tolist() == list(range(20))
    assert len(load_val_tokens(tmp_path, 100)) == 50
