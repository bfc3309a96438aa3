"""Check a shard folder and its tokenizer before anything trains on them: one clear error instead of failed runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.bpb import TokenizerError, load_sentencepiece
from trainer.data.shards import TRAIN_GLOB, VAL_GLOB, ShardError, load_tokens, read_header, shard_paths

SAMPLE_TOKENS = 1 << 20  # token ids checked at the start of each train shard (val shards are checked whole)


@dataclass(frozen=True)
class DataSummary:
    """What a checked data folder holds."""

    data_dir: str
    tokenizer: str
    tokenizer_pieces: int
    train_shards: int
    train_tokens: int
    val_shards: int
    val_tokens: int

    def describe(self) -> str:
        return (f"{self.train_shards} train shard(s), {self.train_tokens:,} tokens; {self.val_shards} val shard(s), "
                f"{self.val_tokens:,} tokens; tokenizer {self.tokenizer_pieces} pieces")


def _split(data_dir: Path, pattern: str, pieces: int, sample: int | None) -> tuple[int, int]:
    """(shards, tokens) of one split; every header and size is checked, and token ids against the tokenizer."""
    paths = shard_paths(data_dir, pattern)
    total = 0
    for path in paths:
        count = read_header(path)
        total += count
        if count:
            tokens = load_tokens(path)[:sample]
            top = int(np.max(tokens))
            if top >= pieces:
                raise ShardError(f"{path}: token id {top} but the tokenizer has {pieces} pieces; the shards were "
                                 "made with another tokenizer: pass the .model file they were made with")
    if total == 0:
        raise ShardError(f"{data_dir}: the {len(paths)} {pattern} shard(s) hold no tokens; rebuild them "
                         "(`python -m trainer data build`) or download them again")
    return len(paths), total


def check_data(data_dir: str | Path, tokenizer: str | Path, vocab_size: int | None = None) -> DataSummary:
    """Check the tokenizer (a SentencePiece model of at most vocab_size pieces) and every shard of data_dir
    (header, size, some tokens); raise ShardError or TokenizerError naming the file and the fix."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise ShardError(f"{data_dir}: no such folder; pass --data the folder with fineweb_train_*.bin and "
                         "fineweb_val_*.bin (`python -m trainer data download` or `data build` makes one)")
    sp = load_sentencepiece(tokenizer)
    pieces = int(sp.vocab_size())
    if vocab_size is not None and pieces > vocab_size:
        raise TokenizerError(f"{tokenizer}: {pieces} pieces but the model's vocab_size is {vocab_size}; pass the "
                             f"tokenizer the space was made for, or --set model.vocab_size={pieces}")
    train = _split(data_dir, TRAIN_GLOB, pieces, SAMPLE_TOKENS)
    val = _split(data_dir, VAL_GLOB, pieces, None)
    return DataSummary(str(data_dir), str(tokenizer), pieces, *train, *val)
