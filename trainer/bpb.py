"""Bits per byte exactly as the challenge defines it (pure functions over token ids).

val_bpb = (summed token cross-entropy in nats / ln 2) / (UTF-8 bytes of the target tokens), where a
token's bytes come from its SentencePiece piece: a leading-space piece ("▁...") counts its space only
when the previous token is not a boundary (control/unknown/unused) token; byte-fallback tokens count
one byte; control tokens count zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SPACE_MARK = "\u2581"


@dataclass(frozen=True)
class ByteTable:
    """Per-token-id byte facts: piece bytes without the leading space, leading-space flag, boundary flag."""

    base_bytes: torch.Tensor  # int32 (V,)
    has_leading_space: torch.Tensor  # bool (V,)
    is_boundary: torch.Tensor  # bool (V,)

    def to(self, device: torch.device | str) -> "ByteTable":
        return ByteTable(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device))


class TokenizerError(ValueError):
    """The tokenizer file is missing or is not a SentencePiece model; the message names the file and the fix."""


def load_sentencepiece(path: Path):
    """Open a SentencePiece model file, with one clear error if it is missing or not a SentencePiece model."""
    import sentencepiece as spm

    path = Path(path).expanduser()
    if not path.is_file():
        raise TokenizerError(
            f"{path}: tokenizer not found; pass --tokenizer pointing at the sp1024 .model file "
            "(python -m trainer data download fetches it)"
        )
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:  # sentencepiece raises RuntimeError("... could not parse ModelProto ...")
        raise TokenizerError(
            f"{path}: not a SentencePiece model ({str(exc).strip()}); pass --tokenizer the .model file the shards "
            "were made with (e.g. fineweb_1024_bpe.model from `python -m trainer data download`)"
        ) from None
    if sp.vocab_size() == 0:
        raise TokenizerError(f"{path}: a SentencePiece model with no pieces; pass the .model file the shards were made with")
    return sp


def byte_table(sp, vocab_size: int) -> ByteTable:
    """Build the byte table for a SentencePiece processor, padded to the model's vocab size."""
    size = max(int(sp.vocab_size()), vocab_size)
    base = np.zeros(size, dtype=np.int32)
    space = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)  # ids past the tokenizer's vocab count as boundaries
    for tid in range(int(sp.vocab_size())):
        if sp.is_control(tid) or sp.is_unknown(tid) or sp.is_unused(tid):
            continue
        boundary[tid] = False
        if sp.is_byte(tid):
            base[tid] = 1
            continue
        piece = sp.id_to_piece(tid)
        if piece.startswith(SPACE_MARK):
            space[tid] = True
            piece = piece[1:]
        base[tid] = len(piece.encode("utf-8"))
    return ByteTable(torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary))


def target_bytes(table: ByteTable, prev_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """UTF-8 bytes each target token contributes, given the token before it (same shapes)."""
    extra = table.has_leading_space[target_ids] & ~table.is_boundary[prev_ids]
    return table.base_bytes[target_ids] + extra.to(table.base_bytes.dtype)


def bits_per_byte(sum_nats: float, total_bytes: float) -> float:
    """Convert summed cross-entropy (nats) over some tokens to bits per UTF-8 byte of those tokens."""
    if total_bytes <= 0:
        raise ValueError("bits_per_byte needs a positive byte count; the validation set is empty")
    return sum_nats / math.log(2.0) / total_bytes
