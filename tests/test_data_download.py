"""Download against a real local mirror laid out like the hub repo; offline failures against a dead endpoint."""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from trainer.data.shards import read_header, write_shard
from trainer.data.cli import add_data_commands, run_data_command
from trainer.data.download import (
    ChecksumError,
    DownloadError,
    HubSource,
    LocalMirrorSource,
    SourceUnreachableError,
    download,
)

SHARD_DIR = "datasets/datasets/fineweb10B_sp1024"
TOKENIZER = "datasets/tokenizers/fineweb_1024_bpe.model"
TRAIN_FILES = 3


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_mirror(root: Path, sha256: dict[str, str] | None = None) -> Path:
    """A directory laid out like the hub repo: manifest, tiny shards, a tokenizer file."""
    rng = np.random.default_rng(0)
    (root / SHARD_DIR).mkdir(parents=True)
    (root / "datasets/tokenizers").mkdir(parents=True)
    write_shard(root / SHARD_DIR / "fineweb_val_000000.bin", rng.integers(0, 1024, 500))
    for i in range(TRAIN_FILES):
        write_shard(root / SHARD_DIR / f"fineweb_train_{i:06d}.bin", rng.integers(0, 1024, 1000 + 10 * i))
    (root / TOKENIZER).write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    entry = {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
             "stats": {"files_train": TRAIN_FILES, "files_val": 1}}
    if sha256:
        entry["sha256"] = sha256
    manifest = {"datasets": [entry],
                "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model"}]}
    (root / "datasets/manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    return make_mirror(tmp_path / "mirror")


def quiet(_: str) -> None:
    pass


def test_downloads_val_first_n_train_shards_and_tokenizer(mirror: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = download(LocalMirrorSource(mirror), out, "sp1024", train_shards=2, progress=quiet)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checksums.json", "fineweb_1024_bpe.model", "fineweb_train_000000.bin",
                     "fineweb_train_000001.bin", "fineweb_val_000000.bin", "manifest.json"]
    assert result.tokenizer_path == out / "fineweb_1024_bpe.model"
    checksums = json.loads((out / "checksums.json").read_text())
    for name in ("fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_1024_bpe.model"):
        remote = mirror / (TOKENIZER if name.endswith(".model") else f"{SHARD_DIR}/{name}")
        assert (out / name).read_bytes() == remote.read_bytes()
        assert checksums[name] == {"sha256": _sha(remote), "size_bytes": remote.stat().st_size}
    assert read_header(out / "fineweb_train_000001.bin") == 1010


def test_rerun_skips_complete_files_without_the_source(mirror: Path, tmp_path: Path):
    out = tmp_path / "out"
    download(LocalMirrorSource(mirror), out, "sp1024", train_shards=2, progress=quiet)
    for shard in (mirror / SHARD_DIR).iterdir():
        shard.unlink()  # a rerun that tried to fetch anything would now fail
    lines: list[str] = []
    result = download(LocalMirrorSource(mirror), out, "sp1024", train_shards=2, progress=lines.append)
    assert result.fetched == ()
    assert len(result.skipped) == 4
    assert all("skipped" in line for line in lines)


def test_error_midway_keeps_finished_files_and_rerun_resumes(mirror: Path, tmp_path: Path):
    out = tmp_path / "out"
    missing = mirror / SHARD_DIR / "fineweb_train_000001.bin"
    saved = missing.read_bytes()
    missing.unlink()
    with pytest.raises(DownloadError, match="fineweb_train_000001.bin is missing"):
        download(LocalMirrorSource(mirror), out, "sp1024", train_shards=3, progress=quiet)
    assert (out / "fineweb_train_000000.bin").is_file()
    assert not list(out.glob("*.partial"))
    assert set(json.loads((out / "checksums.json").read_text())) == {"fineweb_val_000000.bin", "fineweb_train_000000.bin"}

    missing.write_bytes(saved)
    result = download(LocalMirrorSource(mirror), out, "sp1024", train_shards=3, progress=quiet)
    assert result.fetched == ("fineweb_train_000001.bin", "fineweb_train_000002.bin", "fineweb_1024_bpe.model")
    assert (out / "fineweb_train_000001.bin").read_bytes() == saved


def test_truncated_local_file_and_leftover_partial_are_fetched_again(mirror: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    full = (mirror / SHARD_DIR / "fineweb_train_000000.bin").read_bytes()
    (out / "fineweb_train_000000.bin").write_bytes(full[: len(full) // 2])  # e.g. an interrupted manual copy
    (out / "fineweb_val_000000.bin.partial").write_bytes(b"junk from a killed run")
    lines: list[str] = []
    result = download(LocalMirrorSource(mirror), out, "sp1024", train_shards=1, progress=lines.append)
    assert "fineweb_train_000000.bin" in result.fetched
    assert (out / "fineweb_train_000000.bin").read_bytes() == full
    assert not list(out.glob("*.partial"))
    assert any("incomplete" in line for line in lines)


def test_corrupt_source_shard_is_rejected_and_not_installed(mirror: Path, tmp_path: Path):
    bad = mirror / SHARD_DIR / "fineweb_train_000001.bin"
    bad.write_bytes(bad.read_bytes()[:-7])
    out = tmp_path / "out"
    with pytest.raises(ChecksumError, match="fineweb_train_000001.bin.*failed verification"):
        download(LocalMirrorSource(mirror), out, "sp1024", train_shards=2, progress=quiet)
    assert not (out / "fineweb_train_000001.bin").exists()
    assert not list(out.glob("*.partial"))
    assert (out / "fineweb_train_000000.bin").is_file()


def test_sha256_listed_in_manifest_is_enforced(tmp_path: Path):
    mirror = make_mirror(tmp_path / "mirror")
    shard = mirror / SHARD_DIR / "fineweb_train_000000.bin"
    good_sha = _sha(shard)
    # Same length and a valid header, one token changed: only the hash can tell.
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    manifest_path = mirror / "datasets/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["datasets"][0]["sha256"] = {"fineweb_train_000000.bin": good_sha}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ChecksumError, match="sha256"):
        download(LocalMirrorSource(mirror), tmp_path / "out", "sp1024", train_shards=1, progress=quiet)


def test_verify_rehashes_and_replaces_a_locally_corrupted_file(mirror: Path, tmp_path: Path):
    out = tmp_path / "out"
    download(LocalMirrorSource(mirror), out, "sp1024", train_shards=1, progress=quiet)
    local = out / "fineweb_train_000000.bin"
    data = bytearray(local.read_bytes())
    data[-1] ^= 0x01
    local.write_bytes(bytes(data))
    result = download(LocalMirrorSource(mirror), out, "sp1024", train_shards=1, rehash=True, progress=quiet)
    assert result.fetched == ("fineweb_train_000000.bin",)
    assert local.read_bytes() == (mirror / SHARD_DIR / "fineweb_train_000000.bin").read_bytes()


def test_asking_for_more_train_shards_than_exist_names_the_count(mirror: Path, tmp_path: Path):
    with pytest.raises(DownloadError, match="has 3 train shards"):
        download(LocalMirrorSource(mirror), tmp_path / "out", "sp1024", train_shards=4, progress=quiet)


def test_unknown_variant_lists_available(mirror: Path, tmp_path: Path):
    with pytest.raises(DownloadError, match="fineweb10B_sp1024"):
        download(LocalMirrorSource(mirror), tmp_path / "out", "sp9999", train_shards=1, progress=quiet)


def test_unreachable_hub_fails_fast_with_the_fix_and_keeps_files(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "fineweb_val_000000.bin").write_bytes(b"earlier download")
    source = HubSource(endpoint="http://127.0.0.1:9", probe_timeout_s=2)
    start = time.monotonic()
    with pytest.raises(SourceUnreachableError) as info:
        download(source, out, "sp1024", train_shards=1, progress=quiet)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "cannot reach the Hugging Face hub" in message and "HF_ENDPOINT" in message and "--mirror" in message
    assert (out / "fineweb_val_000000.bin").read_bytes() == b"earlier download"


def test_hf_hub_offline_is_named(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceUnreachableError, match="HF_HUB_OFFLINE"):
        download(HubSource(), tmp_path / "out", "sp1024", train_shards=1, progress=quiet)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_download_from_mirror_prints_progress(mirror: Path, tmp_path: Path, capsys):
    args = _parser().parse_args(["data", "download", "--variant", "sp1024", "--train-shards", "1",
                                 "--out", str(tmp_path / "out"), "--mirror", str(mirror)])
    assert run_data_command(args) == 0
    printed = capsys.readouterr().out
    assert "[1/3] fineweb_val_000000.bin: fetched" in printed and "done: 3 fetched" in printed


def test_cli_offline_returns_2_with_one_clear_line(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = _parser().parse_args(["data", "download", "--train-shards", "1", "--out", str(tmp_path / "out"),
                                 "--endpoint", "http://127.0.0.1:9"])
    assert run_data_command(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Hugging Face hub") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "download", "--help"], ["data", "build", "--help"]])
def test_cli_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
