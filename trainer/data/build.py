"""Build challenge-format shards from local text files with a SentencePiece tokenizer.

Documents: by default each input file is one document; with split="blank-line" each run of text
between blank lines is one. Files are read in sorted path order, and the first `val_docs` documents
form the validation split (fineweb_val_*.bin), the rest the train split (fineweb_train_*.bin), as the
challenge does with its fixed first-50k-document val set. Every document is encoded as BOS (id 1)
followed by its tokens, with no EOS, matching the challenge's shards; documents run across shard
boundaries, and each shard holds at most `shard_tokens` tokens. Shuffle the inputs beforehand if the
files are grouped by topic, otherwise val will not look like train.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from trainer.data.shards import write_shard

BOS_ID = 1
SPLITS = ("file", "blank-line")
ENCODE_BATCH_DOCS = 256  # documents encoded per SentencePiece call: fast, with bounded memory
BLANK_LINE = re.compile(r"\n(?:[ \t]*\n)+")  # one or more blank (or whitespace-only) lines


class BuildError(ValueError):
    """Shards cannot be built from these inputs; the message names the problem and the fix."""


@dataclass(frozen=True)
class BuildResult:
    """Counts of what was written."""

    docs_val: int
    docs_train: int
    tokens_val: int
    tokens_train: int
    text_bytes_val: int
    text_bytes_train: int
    shards: tuple[str, ...]


def iter_documents(paths: Iterable[Path], split: str = "file") -> Iterator[str]:
    """Documents from text files, in order; whitespace-only documents are dropped."""
    if split not in SPLITS:
        raise BuildError(f"split {split!r} is not one of {SPLITS}")
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BuildError(f"{path}: not UTF-8 text ({exc}); convert it or leave it out of --text") from None
        text = text.replace("\r\n", "\n")
        parts = [text] if split == "file" else BLANK_LINE.split(text)
        for part in parts:
            doc = part.strip("\n")
            if doc.strip():
                yield doc


class ShardWriter:
    """Accumulates tokens and writes fixed-capacity shards named fineweb_<split>_%06d.bin."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int):
        self.out_dir, self.split, self.shard_tokens = Path(out_dir), split, shard_tokens
        self.buffer = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.written: list[Path] = []
        self.tokens_total = 0

    def add(self, tokens: np.ndarray) -> None:
        """Append tokens, writing a shard each time the buffer fills."""
        pos = 0
        while pos < len(tokens):
            k = min(self.shard_tokens - self.fill, len(tokens) - pos)
            self.buffer[self.fill : self.fill + k] = tokens[pos : pos + k]
            self.fill += k
            pos += k
            if self.fill == self.shard_tokens:
                self.flush()
        self.tokens_total += len(tokens)

    def flush(self) -> None:
        """Write the buffered tokens (if any) as the next shard."""
        if not self.fill:
            return
        path = self.out_dir / f"fineweb_{self.split}_{len(self.written):06d}.bin"
        tmp = path.with_name(path.name + ".partial")  # a crash never leaves a short file under a shard name
        write_shard(tmp, self.buffer[: self.fill])
        os.replace(tmp, path)
        self.written.append(path)
        self.fill = 0


def _load_tokenizer(path: Path):
    from trainer.bpb import TokenizerError, load_sentencepiece

    try:
        sp = load_sentencepiece(path)
    except TokenizerError as exc:
        raise BuildError(str(exc)) from None
    if sp.vocab_size() > 1 << 16:
        raise BuildError(f"{path}: vocab size {sp.vocab_size()} does not fit the uint16 shard format")
    if sp.bos_id() != BOS_ID:
        raise BuildError(
            f"{path}: BOS id is {sp.bos_id()}, but shards start documents with id {BOS_ID}; "
            f"train the tokenizer with bos_id={BOS_ID} (the SentencePiece default)"
        )
    return sp


def _batches(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_shards(text_paths: list[Path], tokenizer_path: Path, out_dir: Path, val_docs: int = 1000,
                 shard_tokens: int = 100_000_000, split: str = "file", overwrite: bool = False,
                 progress: Callable[[str], None] = print) -> BuildResult:
    """Tokenize documents into val then train shards in out_dir; see the module docstring for the layout."""
    if not text_paths:
        raise BuildError("no input text files; check the --text glob")
    if val_docs < 1:
        raise BuildError(f"--val-docs {val_docs}: the validation split needs at least one document")
    if shard_tokens < 1:
        raise BuildError(f"--shard-tokens {shard_tokens} must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = sorted(out_dir.glob("fineweb_*.bin"))
    if stale and not overwrite:
        raise BuildError(f"{out_dir} already holds {len(stale)} shard(s); pass --overwrite or choose an empty --out")
    for path in stale:
        path.unlink()  # a shorter rebuild must not leave old shards behind to be read as part of it
    sp = _load_tokenizer(tokenizer_path)
    writers = {"val": ShardWriter(out_dir, "val", shard_tokens), "train": ShardWriter(out_dir, "train", shard_tokens)}
    docs = {"val": 0, "train": 0}
    text_bytes = {"val": 0, "train": 0}
    for batch in _batches(iter_documents(sorted(text_paths), split), ENCODE_BATCH_DOCS):
        for doc, ids in zip(batch, sp.encode(batch)):
            name = "val" if docs["val"] < val_docs else "train"
            writers[name].add(np.asarray([BOS_ID, *ids], dtype=np.uint16))
            docs[name] += 1
            text_bytes[name] += len(doc.encode("utf-8"))
        progress(f"tokenized {docs['val'] + docs['train']:,} documents, "
                 f"{writers['val'].tokens_total + writers['train'].tokens_total:,} tokens")
    writers["val"].flush()
    writers["train"].flush()
    if docs["val"] < val_docs or not docs["train"]:
        total = docs["val"] + docs["train"]
        for w in writers.values():
            for path in w.written:
                path.unlink()  # a split without train shards would only fail later, in training
        raise BuildError(f"only {total} documents in the input: --val-docs {val_docs} leaves none for train; "
                         "lower --val-docs or add text")
    result = BuildResult(
        docs_val=docs["val"], docs_train=docs["train"],
        tokens_val=writers["val"].tokens_total, tokens_train=writers["train"].tokens_total,
        text_bytes_val=text_bytes["val"], text_bytes_train=text_bytes["train"],
        shards=tuple(p.name for w in writers.values() for p in w.written),
    )
    info = {**asdict(result), "tokenizer": str(tokenizer_path), "split": split,
            "inputs": [str(p) for p in sorted(text_paths)]}
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    progress(f"wrote {len(result.shards)} shards to {out_dir}: val {result.docs_val:,} docs / "
             f"{result.tokens_val:,} tokens, train {result.docs_train:,} docs / {result.tokens_train:,} tokens")
    return result
