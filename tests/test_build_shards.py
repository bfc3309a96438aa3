"""Build shards from text made here with a SentencePiece model trained here; decode them back."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from trainer.data.build import BOS_ID, BuildError, build_shards, iter_documents
from trainer.data.shards import TRAIN_GLOB, VAL_GLOB, load_tokens
from trainer.data.cli import add_data_commands, run_data_command

REAL_TOKENIZER = Path(__file__).resolve().parents[2] / "shared/data/tokenizers/fineweb_1024_bpe.model"

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "naïve café — 東京 🚀 byte fallback covers what the vocabulary lacks",
    "Line one of a document\nline two, with  two spaces\tand a tab",
    "Recurrence lets a small model reuse its blocks several times.",
    "Short.",
    "A longer document: " + " ".join(f"word{i}" for i in range(60)),
    "The last document ends here",
]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A 320-piece BPE model (256 of them byte pieces) with byte fallback and no normalization, so decoding is exact."""
    root = tmp_path_factory.mktemp("sp")
    corpus = root / "corpus.txt"
    # ASCII only: the non-ASCII characters in DOCS must come back through byte fallback.
    corpus.write_text("\n".join(f"{DOCS[i % 4 if i % 4 != 1 else 0]} sample {i}" for i in range(160)), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "tiny"), vocab_size=320, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, minloglevel=2,
    )
    return root / "tiny.model"


def write_inputs(folder: Path) -> list[Path]:
    """Documents spread over three files, separated by blank lines (some with trailing spaces)."""
    folder.mkdir()
    groups = [DOCS[:3], DOCS[3:5], DOCS[5:]]
    paths = []
    for i, group in enumerate(groups):
        path = folder / f"part{i}.txt"
        path.write_text("\n\n \n".join(group) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def decode_split(out: Path, pattern: str, sp: spm.SentencePieceProcessor) -> list[str]:
    """All documents of a split: concatenate its shards, cut at BOS, decode each piece."""
    tokens = np.concatenate([np.asarray(load_tokens(p, sp.vocab_size())) for p in sorted(out.glob(pattern))])
    starts = np.flatnonzero(tokens == BOS_ID)
    assert starts[0] == 0, "every split must start with a document's BOS"
    bounds = list(starts) + [len(tokens)]
    return [sp.decode(tokens[a + 1 : b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]


def test_blank_line_documents_round_trip_across_shard_boundaries(tokenizer: Path, tmp_path: Path):
    paths = write_inputs(tmp_path / "text")
    out = tmp_path / "shards"
    shard_tokens = 40  # smaller than most documents, so documents span shards
    result = build_shards(paths, tokenizer, out, val_docs=2, shard_tokens=shard_tokens, split="blank-line",
                          progress=quiet)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    assert decode_split(out, VAL_GLOB, sp) == DOCS[:2]
    assert decode_split(out, TRAIN_GLOB, sp) == DOCS[2:]
    assert (result.docs_val, result.docs_train) == (2, len(DOCS) - 2)
    expected_val_tokens = sum(1 + len(sp.encode(d)) for d in DOCS[:2])
    assert result.tokens_val == expected_val_tokens
    train_shards = sorted(out.glob(TRAIN_GLOB))
    assert len(train_shards) == math.ceil(result.tokens_train / shard_tokens)
    assert all(len(load_tokens(p)) == shard_tokens for p in train_shards[:-1])
    assert result.text_bytes_val == sum(len(d.encode("utf-8")) for d in DOCS[:2])


def test_one_document_per_file(tokenizer: Path, tmp_path: Path):
    paths = write_inputs(tmp_path / "text")
    out = tmp_path / "shards"
    build_shards(paths, tokenizer, out, val_docs=1, shard_tokens=10_000, split="file", progress=quiet)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    files = [p.read_text(encoding="utf-8").strip("\n") for p in sorted(paths)]
    assert decode_split(out, VAL_GLOB, sp) == files[:1]
    assert decode_split(out, TRAIN_GLOB, sp) == files[1:]
    assert [p.name for p in sorted(out.glob("fineweb_*.bin"))] == ["fineweb_train_000000.bin", "fineweb_val_000000.bin"]


def test_whitespace_only_blocks_are_not_documents(tmp_path: Path):
    path = tmp_path / "a.txt"
    path.write_text("first\n\n\n  \n\nsecond\n\n", encoding="utf-8")
    assert list(iter_documents([path], "blank-line")) == ["first", "second"]


def test_val_docs_leaving_no_train_is_an_error_and_leaves_no_shards(tokenizer: Path, tmp_path: Path):
    paths = write_inputs(tmp_path / "text")
    out = tmp_path / "shards"
    with pytest.raises(BuildError, match="lower --val-docs"):
        build_shards(paths, tokenizer, out, val_docs=len(DOCS), split="blank-line", progress=quiet)
    assert not list(out.glob("*.bin"))


def test_existing_shards_need_overwrite(tokenizer: Path, tmp_path: Path):
    paths = write_inputs(tmp_path / "text")
    out = tmp_path / "shards"
    build_shards(paths, tokenizer, out, val_docs=2, shard_tokens=20, split="blank-line", progress=quiet)
    many = len(list(out.glob(TRAIN_GLOB)))
    with pytest.raises(BuildError, match="--overwrite"):
        build_shards(paths, tokenizer, out, val_docs=2, split="blank-line", progress=quiet)
    build_shards(paths, tokenizer, out, val_docs=2, shard_tokens=10_000, split="blank-line", overwrite=True,
                 progress=quiet)
    assert many > 1 and len(list(out.glob(TRAIN_GLOB))) == 1  # no stale shards from the first build


def test_tokenizer_without_bos_1_is_refused(tmp_path: Path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join([DOCS[0], DOCS[3], DOCS[5]] * 5), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "nobos"), vocab_size=300,
                                   byte_fallback=True, bos_id=-1, minloglevel=2)
    with pytest.raises(BuildError, match="BOS id is -1"):
        build_shards([corpus], tmp_path / "nobos.model", tmp_path / "out", val_docs=1, progress=quiet)


def test_cli_build(tokenizer: Path, tmp_path: Path, capsys):
    write_inputs(tmp_path / "text")
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "build", "--text", str(tmp_path / "text/*.txt"), "--tokenizer", str(tokenizer),
                              "--out", str(tmp_path / "shards"), "--val-docs", "2", "--split", "blank-line"])
    assert run_data_command(args) == 0
    assert "wrote 2 shards" in capsys.readouterr().out
    bad = parser.parse_args(["data", "build", "--text", str(tmp_path / "nothing/*.txt"), "--tokenizer", str(tokenizer),
                             "--out", str(tmp_path / "x")])
    assert run_data_command(bad) == 2
    assert "matched no files" in capsys.readouterr().err


@pytest.mark.skipif(not REAL_TOKENIZER.is_file(), reason="the challenge tokenizer is not in ../shared here")
def test_round_trip_with_the_challenge_tokenizer(tmp_path: Path):
    paths = write_inputs(tmp_path / "text")
    out = tmp_path / "shards"
    build_shards(paths, REAL_TOKENIZER, out, val_docs=3, shard_tokens=64, split="blank-line", progress=quiet)
    sp = spm.SentencePieceProcessor(model_file=str(REAL_TOKENIZER))
    # This tokenizer normalizes whitespace, so compare with what it decodes each document to on its own.
    normalized = [sp.decode(sp.encode(d)) for d in DOCS]
    assert decode_split(out, VAL_GLOB, sp) == normalized[:3]
    assert decode_split(out, TRAIN_GLOB, sp) == normalized[3:]
