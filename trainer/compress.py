"""The artifact file: MAGIC | version u8 | codec id u8 | shuffled u8 | shuffle start u64 | payload length u64 |
sha256 of the payload | the payload compressed by zstd, brotli or lzma (integers little-endian). Shuffled: from
`start` on, the 2-byte lanes were split into a plane of first bytes and one of second bytes before compressing.
"""
from __future__ import annotations

import hashlib
import lzma
import struct

import numpy as np
import zstandard

MAGIC = b"RSAF"
VERSION = 1
HEAD = struct.Struct("<4sBBBQQ32s")
CONTAINER_BYTES = HEAD.size
CODECS = ("zstd", "brotli", "lzma")  # id = index + 1
# zstd is the smaller of zstd_level and level 1: on low-bit codes level 22 buys matches that cost more than their
# literals (a trained int5 9x512 payload: 7.6% smaller at level 1; BENCHMARKS.md).
FAST_ZSTD_LEVEL = 1
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
BROTLI_WINDOW_BITS = 24


class DamagedError(ValueError):
    """The bytes do not decode to the payload written."""


def _brotli():
    try:
        import brotli
    except ImportError:
        raise ValueError("export.compressor brotli needs the brotli package: pip install brotli "
                         "(or pip install '.[brotli]')") from None
    return brotli


def available() -> tuple[str, ...]:
    """The codecs this machine can write."""
    try:
        _brotli()
    except ValueError:
        return ("zstd", "lzma")
    return CODECS


def shuffle(data: bytes, start: int, inverse: bool = False) -> bytes:
    """Split data[start:] into planes of first and second bytes of each 2-byte lane (inverse: join them)."""
    n = (len(data) - start) // 2 * 2
    lanes = np.frombuffer(data, np.uint8, n, start)
    lanes = lanes.reshape(2, -1) if inverse else lanes.reshape(-1, 2)
    return data[:start] + lanes.T.tobytes() + data[start + n:]


def compress(data: bytes, codec: str, zstd_level: int = 22) -> bytes:
    """data compressed by one codec; zstd is the smaller of zstd_level and FAST_ZSTD_LEVEL."""
    if codec == "zstd":
        strong = zstandard.ZstdCompressor(level=zstd_level).compress(data)
        if zstd_level == FAST_ZSTD_LEVEL:
            return strong
        return min(strong, zstandard.ZstdCompressor(level=FAST_ZSTD_LEVEL).compress(data), key=len)
    if codec == "brotli":
        return _brotli().compress(data, quality=11, lgwin=BROTLI_WINDOW_BITS)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    raise ValueError(f"unknown codec {codec!r}; one of {CODECS}")


def decompress(blob: bytes, codec: str, size: int) -> bytes:
    """Inverse of compress; raises on a stream cut short or followed by other bytes."""
    if codec == "brotli":
        return _brotli().decompress(blob)  # raises on both itself
    if codec == "zstd":
        stream = zstandard.ZstdDecompressor().decompressobj()
        data = stream.decompress(blob)
    else:
        stream = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=LZMA_FILTERS)
        data = stream.decompress(blob, max_length=size + 1)
    if not stream.eof or stream.unused_data:
        raise ValueError("the stream is cut short or followed by other bytes")
    return data


def encode(payload: bytes, codec: str, zstd_level: int = 22, shuffle_from: int | None = None) -> bytes:
    """The file bytes: the header, then the (shuffled) payload compressed."""
    data = payload if shuffle_from is None else shuffle(payload, shuffle_from)
    head = HEAD.pack(MAGIC, VERSION, CODECS.index(codec) + 1, shuffle_from is not None, shuffle_from or 0,
                     len(payload), hashlib.sha256(payload).digest())
    return head + compress(data, codec, zstd_level)


def codec_of(blob: bytes) -> str:
    """Which codec wrote a container."""
    return CODECS[HEAD.unpack_from(blob)[2] - 1]


def decode(blob: bytes) -> bytes:
    """The payload a file holds, checked against its length and sha256; DamagedError otherwise."""
    if len(blob) < HEAD.size:
        raise DamagedError(f"truncated: {len(blob)} bytes, shorter than the {HEAD.size}-byte header")
    magic, version, codec_id, shuffled, start, size, digest = HEAD.unpack_from(blob)
    if magic != MAGIC or version != VERSION or not 1 <= codec_id <= len(CODECS) or shuffled > 1 or start > size:
        raise DamagedError("bad container header")
    codec = CODECS[codec_id - 1]
    if codec == "brotli":
        _brotli()  # a missing package is not damage: say how to install it
    try:
        data = decompress(blob[HEAD.size:], codec, size)
    except Exception as exc:  # each codec has its own error type
        raise DamagedError(f"{codec} cannot decompress it ({exc})") from None
    if len(data) != size:
        raise DamagedError(f"payload is {len(data)} bytes, the header says {size}")
    if shuffled:
        data = shuffle(data, start, inverse=True)
    if hashlib.sha256(data).digest() != digest:
        raise DamagedError("checksum mismatch")
    return data
