"""The challenge's token shard format: read, write, and stream batches across shards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TRAIN_GLOB = "fineweb_train_*.bin"
VAL_GLOB = "fineweb_val_*.bin"


class ShardError(ValueError):
    """A shard file is malformed; the message names the file and what is wrong."""


def write_shard(path: Path, tokens: np.ndarray | list[int]) -> None:
    """Write tokens (ids < 65536) as one shard: 256 x int32 header, then uint16 tokens."""
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= 1 << 16):
        raise ShardError(f"{path}: token ids must be in 0..65535 to fit uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, arr.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(arr.astype("<u2").tobytes())


def read_header(path: Path) -> int:
    """Check a shard's header and size; return its token count."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header; re-download it")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise ShardError(f"{path}: magic {header[0]} != {SHARD_MAGIC}; not a challenge shard")
    if header[1] != SHARD_VERSION:
        raise ShardError(f"{path}: version {header[1]} unsupported (expected {SHARD_VERSION})")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if size != expected:
        raise ShardError(
            f"{path}: header says {count} tokens ({expected} bytes) but the file has {size} bytes; "
            "it is truncated or corrupt, re-download or rebuild it"
        )
    return count


def load_tokens(path: Path, vocab_size: int | None = None) -> np.ndarray:
    """Load one shard's tokens (memory-mapped), checking ids against the vocabulary."""
    count = read_header(path)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
    if vocab_size is not None and count:
        top = int(tokens.max())
        if top >= vocab_size:
            raise ShardError(
                f"{path}: token id {top} >= vocab_size {vocab_size}; the shard was made with another "
                "tokenizer, or set model.vocab_size to match it"
            )
    return tokens


def shard_paths(data_dir: Path, pattern: str) -> list[Path]:
    """Sorted shard files matching pattern, or a clear error if there are none."""
    paths = sorted(Path(data_dir).glob(pattern))
    if not paths:
        raise ShardError(
            f"{data_dir}: no files match {pattern}; download them with "
            "`python -m trainer data download` or build them with `python -m trainer data build`"
        )
    return paths


def load_val_tokens(data_dir: Path, vocab_size: int, max_tokens: int | None = None) -> torch.Tensor:
    """All validation tokens (or a prefix) as one int64 tensor."""
    parts, total = [], 0
    for path in shard_paths(data_dir, VAL_GLOB):
        arr = load_tokens(path, vocab_size)
        if max_tokens is not None:
            arr = arr[: max_tokens - total]
        parts.append(torch.from_numpy(np.asarray(arr, dtype=np.int64)))
        total += len(arr)
        if max_tokens is not None and total >= max_tokens:
            break
    if total == 0:
        raise ShardError(f"{data_dir}: the {VAL_GLOB} shards hold no tokens; rebuild them "
                         "(`python -m trainer data build`) or download them again")
    return torch.cat(parts)


class TokenStream:
    """Reads training tokens in order across shards, wrapping around at the end."""

    def __init__(self, data_dir: Path, vocab_size: int, pattern: str = TRAIN_GLOB):
        self.paths = shard_paths(data_dir, pattern)
        # Empty shards are skipped when reading; if all are empty take() would loop forever looking for tokens.
        if not any(read_header(p) for p in self.paths):
            raise ShardError(f"{data_dir}: the {len(self.paths)} {pattern} shard(s) hold no tokens; rebuild them "
                             "(`python -m trainer data build`) or download them again")
        self.vocab_size = vocab_size
        self.shard_index = 0
        self.position = 0
        self.tokens = load_tokens(self.paths[0], vocab_size)

    def state(self) -> dict[str, int]:
        """Where the stream is, for checkpoints."""
        return {"shard_index": self.shard_index, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a checkpointed position."""
        index = int(state["shard_index"]) % len(self.paths)
        if index != self.shard_index:  # a rewind within the loaded shard (warm-up, rung cooldown) reads nothing
            self.tokens = load_tokens(self.paths[index], self.vocab_size)
        self.shard_index = index
        self.position = int(state["position"])

    def take(self, n: int) -> np.ndarray:
        """The next n tokens, crossing shard boundaries as needed."""
        chunks, need = [], n
        while need:
            left = len(self.tokens) - self.position
            if left <= 0:
                self.shard_index = (self.shard_index + 1) % len(self.paths)
                self.tokens = load_tokens(self.paths[self.shard_index], self.vocab_size)
                self.position = 0
                continue
            k = min(left, need)
            chunks.append(np.asarray(self.tokens[self.position : self.position + k]))
            self.position += k
            need -= k
        return np.concatenate(chunks)


class DistributedBatches:
    """Each global batch is one contiguous span; rank r takes its own slice of it (plus one target token)."""

    def __init__(self, stream: TokenStream, rank: int, world_size: int, device: torch.device):
        self.stream, self.rank, self.world_size, self.device = stream, rank, world_size, device

    def state(self) -> dict[str, int]:
        """Where the stream is, for checkpoints and rewinds."""
        return self.stream.state()

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        if "shard_index" not in state:
            raise ValueError("the saved data position is a shuffled draw's (train.data_order: shuffled); resume "
                             "with the data order it was saved with")
        self.stream.restore(state)

    def next(self, local_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of shape (local_tokens // seq_len, seq_len) for this rank."""
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        local = torch.from_numpy(chunk[self.rank * span : (self.rank + 1) * span].astype(np.int64))
        pinned = local.pin_memory() if self.device.type == "cuda" else local
        local = pinned.to(self.device, non_blocking=True)
        x = local[:-1].reshape(-1, seq_len)
        y = local[1:].reshape(-1, seq_len)
        return x, y
