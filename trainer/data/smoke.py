"""The embedded smoke corpus: shards and a tokenizer built on this machine, so `--smoke` runs need no download.

The text is generated (pseudo-words with a Zipf-like frequency, in sentences and paragraphs), deterministic,
about 1 MB (300k tokens); a SentencePiece BPE model with the challenge's special ids (pad 0, bos 1, eos 2, unk 3) and
byte fallback is trained on it, and the documents are written as challenge shards (BOS + tokens). Built once
into a cache folder (default ~/.cache/recurrence-search/smoke, or $XDG_CACHE_HOME/recurrence-search/smoke),
checked against its manifest's sha256s on every use, and rebuilt when anything in it is missing or damaged.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from trainer.data.build import BOS_ID
from trainer.data.shards import write_shard

FORMAT_VERSION = 1  # bump when the text, tokenizer or layout changes: a new folder is built beside the old
VOCAB_SIZE = 1024  # the challenge's sp1024 size, so every shipped space and preset fits it
TOKENIZER_NAME = "smoke_1024_bpe.model"
MANIFEST_NAME = "smoke.json"
CORPUS_NAME = "corpus.txt"
TRAIN_DOCS, VAL_DOCS, TRAIN_SHARDS = 1200, 150, 2
SEED = 20240520


@dataclass(frozen=True)
class SmokeData:
    """Where the smoke shards and tokenizer are, and whether this call built them."""

    data_dir: Path
    tokenizer: Path
    built_now: bool


def default_cache_dir() -> Path:
    """~/.cache/recurrence-search/smoke, or under $XDG_CACHE_HOME when it is set (the XDG convention)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root).expanduser() / "recurrence-search" / "smoke"


def _vocabulary(rng: random.Random, words: int = 2400) -> list[str]:
    """Distinct pseudo-words of 1-4 syllables, a few with accents so byte fallback is exercised."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch",
              "cl", "dr", "fl", "gr", "pl", "qu", "sh", "st", "th", "tr"]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "é", "ü"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng"]
    found: dict[str, None] = {}
    while len(found) < words:
        syllables = rng.choices([1, 2, 3, 4], weights=[3, 5, 3, 1])[0]
        word = "".join(rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas) for _ in range(syllables))
        found[word] = None
    return list(found)


def make_documents(count: int, seed: int) -> list[str]:
    """`count` documents of generated sentences: frequent words are short and common, as in natural text."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(random.Random(SEED))
    weights = [1.0 / (rank + 2) for rank in range(len(vocabulary))]
    docs = []
    for _ in range(count):
        paragraphs = []
        for _ in range(rng.randint(1, 3)):
            sentences = []
            for _ in range(rng.randint(2, 7)):
                words = rng.choices(vocabulary, weights=weights, k=rng.randint(4, 16))
                if rng.random() < 0.2:
                    words.insert(rng.randrange(len(words)), str(rng.randint(0, 2024)))
                sentences.append(" ".join(words).capitalize() + rng.choice(".....!?;"))
            paragraphs.append(" ".join(sentences))
        docs.append("\n".join(paragraphs))
    return docs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid(folder: Path) -> bool:
    """Whether folder holds a complete smoke set whose every file matches the manifest."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            return False
        return all(_sha256(folder / name) == sha for name, sha in manifest["sha256"].items())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False


def _train_tokenizer(docs: list[str], path: Path) -> Path:
    import io

    import sentencepiece as spm

    # From an iterator into memory: a model trained from a file records that file's path, so two builds in two
    # folders would differ by it.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for doc in docs for line in doc.splitlines()]), model_writer=model,
        vocab_size=VOCAB_SIZE, model_type="bpe", byte_fallback=True, character_coverage=0.995, pad_id=0,
        bos_id=BOS_ID, eos_id=2, unk_id=3, num_threads=1, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def _build(folder: Path) -> None:
    """Write the corpus, tokenizer, shards and manifest into an empty folder."""
    import sentencepiece as spm

    docs = make_documents(TRAIN_DOCS + VAL_DOCS, SEED)
    val, train = docs[:VAL_DOCS], docs[VAL_DOCS:]
    corpus = folder / CORPUS_NAME
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    model = _train_tokenizer(docs, folder / TOKENIZER_NAME)
    sp = spm.SentencePieceProcessor(model_file=str(model))

    def encode(batch: list[str]) -> np.ndarray:
        return np.asarray([t for ids in sp.encode(batch) for t in (BOS_ID, *ids)], dtype=np.int64)

    write_shard(folder / "fineweb_val_000000.bin", encode(val))
    per_shard = -(-len(train) // TRAIN_SHARDS)
    for i in range(TRAIN_SHARDS):
        write_shard(folder / f"fineweb_train_{i:06d}.bin", encode(train[i * per_shard:(i + 1) * per_shard]))
    files = sorted(p.name for p in folder.iterdir())
    manifest = {"format_version": FORMAT_VERSION, "vocab_size": VOCAB_SIZE, "tokenizer": TOKENIZER_NAME,
                "docs_train": len(train), "docs_val": len(val),
                "sha256": {name: _sha256(folder / name) for name in files}}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def smoke_data(cache_dir: Path | None = None, progress: Callable[[str], None] = print) -> SmokeData:
    """The smoke shards and tokenizer, built into cache_dir on first use (or when damaged), else reused."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / f"v{FORMAT_VERSION}"
    if _valid(folder):
        return SmokeData(folder, folder / TOKENIZER_NAME, built_now=False)
    root.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        progress(f"smoke data at {folder} is incomplete or damaged; building it again")
    else:
        progress(f"building the smoke data set (generated text, a {VOCAB_SIZE}-piece tokenizer) in {folder}")
    # Built beside its final place and renamed into it, so a crash or a concurrent build never leaves a
    # half-written folder under the final name.
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        _build(staging)
        if folder.exists() and not _valid(folder):
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(staging, folder)
        except OSError:
            if not _valid(folder):  # another process's folder that is not good either: never expected
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"smoke data ready: {folder}")
    return SmokeData(folder, folder / TOKENIZER_NAME, built_now=True)
