"""`python -m trainer data download|build`: get the challenge shards, or make shards from local text."""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from trainer.data.build import SPLITS, BuildError, build_shards
from trainer.data.shards import ShardError
from trainer.data.download import DEFAULT_REPO_ID, DownloadError, HubSource, LocalMirrorSource, download


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `data` with its `download` and `build` subcommands on a subparsers object."""
    data = subparsers.add_parser("data", help="download or build token shards",
                                 description="Get the challenge's FineWeb shards, or build shards from local text.")
    sub = data.add_subparsers(dest="data_command", required=True)

    dl = sub.add_parser(
        "download", help="fetch FineWeb shards and the tokenizer from the Hugging Face hub (resumable)",
        description="Fetch every val shard, the first N train shards and the tokenizer into --out. Reruns skip "
        "complete files; each file is verified (shard header, size, sha256) before it gets its final name; "
        "hashes are recorded in OUT/checksums.json. The tokenizer keeps its name (e.g. fineweb_1024_bpe.model).",
    )
    dl.add_argument("--variant", default="sp1024", help="tokenizer family: sp1024 (default), sp4096, ...")
    dl.add_argument("--train-shards", type=int, default=80, help="train shards to fetch (100M tokens each; default 80)")
    dl.add_argument("--out", type=Path, required=True, help="folder for the shards, tokenizer and checksums.json")
    dl.add_argument("--repo-id", default=DEFAULT_REPO_ID, help=f"hub dataset repo (default {DEFAULT_REPO_ID})")
    dl.add_argument("--revision", default=None, help="hub branch, tag or commit (default: main)")
    dl.add_argument("--endpoint", default=None, help="hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    dl.add_argument("--mirror", type=Path, default=None,
                    help="read from a local folder laid out like the hub repo instead of the hub")
    dl.add_argument("--verify", action="store_true", help="re-hash files already present instead of trusting checksums.json")

    bd = sub.add_parser(
        "build", help="tokenize local text files into challenge-format shards",
        description="Each file (or, with --split blank-line, each blank-line-separated block) is one document, "
        "encoded as BOS (id 1) + tokens. Files are read in sorted order; the first --val-docs documents are "
        "the val split (fineweb_val_*.bin), the rest train (fineweb_train_*.bin).",
    )
    bd.add_argument("--text", required=True, action="append",
                    help="glob of UTF-8 text files, quoted (repeatable), e.g. 'corpus/**/*.txt'")
    bd.add_argument("--tokenizer", type=Path, required=True, help="SentencePiece .model file (BOS id must be 1)")
    bd.add_argument("--out", type=Path, required=True, help="folder for the shards")
    bd.add_argument("--val-docs", type=int, default=1000, help="documents in the val split (default 1000)")
    bd.add_argument("--shard-tokens", type=int, default=100_000_000, help="max tokens per shard (default 100M)")
    bd.add_argument("--split", choices=SPLITS, default="file", help="what one document is (default: one per file)")
    bd.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    return data


def _text_paths(patterns: list[str]) -> list[Path]:
    paths = {Path(p) for pattern in patterns for p in glob.glob(pattern, recursive=True) if Path(p).is_file()}
    if not paths:
        raise BuildError(f"--text {patterns} matched no files; quote the glob and check the path")
    return sorted(paths)


def run_data_command(args: argparse.Namespace) -> int:
    """Run `data download` or `data build`; print one clear error line and return 2 on failure."""
    try:
        if args.data_command == "download":
            if args.mirror is not None:
                source = LocalMirrorSource(args.mirror)
            else:
                source = HubSource(args.repo_id, args.revision, args.endpoint)
            print(f"downloading {args.variant} ({args.train_shards} train shards) from {source.describe()} to {args.out}")
            result = download(source, args.out, args.variant, args.train_shards, rehash=args.verify)
            print(f"done: {len(result.fetched)} fetched, {len(result.skipped)} already complete; "
                  f"tokenizer {result.tokenizer_path}")
            return 0
        if args.data_command == "build":
            build_shards(_text_paths(args.text), args.tokenizer, args.out, args.val_docs, args.shard_tokens,
                         args.split, args.overwrite)
            return 0
        raise ValueError(f"unknown data command {args.data_command!r}")
    except (DownloadError, BuildError, ShardError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
