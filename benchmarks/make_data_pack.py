"""Pack ../shared/data's val shard, every train shard and the tokenizer into .searchpack/data.tar.zst.

Until the sixth session the pack held train shards 0-1 (20.0M tokens); from the seventh it holds all four
(38.3M tokens), so a 120 s run of the baseline makes about 6 passes over the train set instead of 11.
The whole pack is ~22 MB at zstd-19, which with .raypack and .whl stays under a call's 64 MiB.
"""
import sys
import tarfile
from pathlib import Path

import zstandard

SHARED = Path("../shared/data")
PACK = Path(".searchpack/data.tar.zst")


def main() -> int:
    """Write the pack and print what went in."""
    shards = sorted((SHARED / "textmix_sp1024").glob("fineweb_*.bin"))
    if not any("train" in s.name for s in shards):
        print(f"no train shards under {SHARED / 'textmix_sp1024'}: run from the repository root", file=sys.stderr)
        return 2
    PACK.parent.mkdir(exist_ok=True)
    with open(PACK, "wb") as fh, zstandard.ZstdCompressor(level=19, threads=-1).stream_writer(fh) as zw:
        with tarfile.open(fileobj=zw, mode="w|") as tar:
            for shard in shards:
                tar.add(shard, f"data/{shard.name}")
            tar.add(SHARED / "tokenizers/fineweb_1024_bpe.model", "fineweb_1024_bpe.model")
    print(f"{PACK}: {', '.join(s.name for s in shards)} + tokenizer, {PACK.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
