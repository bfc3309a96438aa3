"""Pack the textmix corpus (val shard, every train shard) and the tokenizer into .searchpack/data.tar.zst.

    python benchmarks/device/make_data_pack.py [SHARED_DATA]   # default ../shared/data

SHARED_DATA holds textmix_sp1024/ and tokenizers/fineweb_1024_bpe.model. All four train shards (38.3M tokens)
go in: with two (20.0M) a 120 s run of the baseline made about 11 passes over the train set instead of 6. The
pack is ~22 MB at zstd-19, which with .raypack and .whl stays under the 64 MiB a device command carries.
"""
import sys
import tarfile
from pathlib import Path

import zstandard

PACK = Path(".searchpack/data.tar.zst")


def main(argv: list[str]) -> int:
    """Write the pack and print what went in."""
    shared = Path(argv[0] if argv else "../shared/data")
    shards = sorted((shared / "textmix_sp1024").glob("fineweb_*.bin"))
    if not any("train" in s.name for s in shards):
        print(f"no train shards under {shared / 'textmix_sp1024'}: run from the repository root, or name the data "
              "folder: python benchmarks/device/make_data_pack.py /path/to/shared/data", file=sys.stderr)
        return 2
    PACK.parent.mkdir(exist_ok=True)
    with open(PACK, "wb") as fh, zstandard.ZstdCompressor(level=19, threads=-1).stream_writer(fh) as zw:
        with tarfile.open(fileobj=zw, mode="w|") as tar:
            for shard in shards:
                tar.add(shard, f"data/{shard.name}")
            tar.add(shared / "tokenizers/fineweb_1024_bpe.model", "fineweb_1024_bpe.model")
    print(f"{PACK}: {', '.join(s.name for s in shards)} + tokenizer, {PACK.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
