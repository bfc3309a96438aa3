"""The embedded smoke corpus: built once with no network, reused, rebuilt when damaged, and a valid data set."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from trainer.data import smoke
from trainer.data.check import check_data
from trainer.data.shards import load_tokens


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The smoke set built into a fresh cache folder with every socket refused (it must need no network)."""
    cache = tmp_path_factory.mktemp("cache")
    real_connect = socket.socket.connect

    def offline(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError("network is off in this test")
        return real_connect(self, address)

    socket.socket.connect = offline
    lines: list[str] = []
    try:
        found = smoke.smoke_data(cache, progress=lines.append)
    finally:
        socket.socket.connect = real_connect
    return {"cache": cache, "found": found, "lines": lines}


def test_built_once_as_a_valid_data_set(built):
    found = built["found"]
    assert found.built_now and found.data_dir == built["cache"] / f"v{smoke.FORMAT_VERSION}"
    assert any("building the smoke data set" in line for line in built["lines"])
    summary = check_data(found.data_dir, found.tokenizer, vocab_size=1024)
    assert (summary.train_shards, summary.val_shards, summary.tokenizer_pieces) == (2, 1, smoke.VOCAB_SIZE)
    sp = spm.SentencePieceProcessor(model_file=str(found.tokenizer))
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)  # the challenge's ids
    val = np.asarray(load_tokens(found.data_dir / "fineweb_val_000000.bin"))
    # Every document starts with BOS, and decoding the val split gives back the generated documents (the
    # tokenizer's NFKC normalization turns a paragraph break into a space).
    docs = smoke.make_documents(smoke.TRAIN_DOCS + smoke.VAL_DOCS, smoke.SEED)[:smoke.VAL_DOCS]
    assert int((val == 1).sum()) == len(docs) and val[0] == 1
    pieces = np.split(val, np.flatnonzero(val == 1))[1:]
    assert [sp.decode(p[1:].tolist()) for p in pieces[:5]] == [" ".join(d.split()) for d in docs[:5]]
    assert not list(built["cache"].glob(".building-*"))  # the staging folder is gone


def test_reused_without_rebuilding(built):
    lines: list[str] = []
    again = smoke.smoke_data(built["cache"], progress=lines.append)
    assert not again.built_now and again.data_dir == built["found"].data_dir and lines == []


@pytest.mark.parametrize("damage", ["truncate_shard", "flip_tokenizer_byte", "delete_manifest", "drop_val"])
def test_damaged_set_is_rebuilt_identically(built, tmp_path, damage):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    folder = cache / built["found"].data_dir.name
    manifest = json.loads((folder / smoke.MANIFEST_NAME).read_text())
    if damage == "truncate_shard":
        shard = folder / "fineweb_train_000001.bin"
        shard.write_bytes(shard.read_bytes()[:-2])
    elif damage == "flip_tokenizer_byte":
        data = bytearray((folder / smoke.TOKENIZER_NAME).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / smoke.TOKENIZER_NAME).write_bytes(bytes(data))
    elif damage == "delete_manifest":
        (folder / smoke.MANIFEST_NAME).unlink()
    else:
        (folder / "fineweb_val_000000.bin").unlink()
    lines: list[str] = []
    again = smoke.smoke_data(cache, progress=lines.append)
    assert again.built_now and any("damaged; building it again" in line for line in lines)
    # Generated text and tokenizer training are deterministic: the rebuild is byte-identical to the first build.
    assert json.loads((folder / smoke.MANIFEST_NAME).read_text()) == manifest
    assert not smoke.smoke_data(cache, progress=lines.append).built_now


def test_default_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smoke.default_cache_dir() == tmp_path / "xdg" / "recurrence-search" / "smoke"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert smoke.default_cache_dir() == Path(tmp_path / "home" / ".cache" / "recurrence-search" / "smoke")


def test_trainer_train_smoke_without_data_uses_the_built_in_corpus(tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import TINY_MODEL

    repo = Path(__file__).resolve().parents[1]
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {**TINY_MODEL, "vocab_size": 1024}, "export": {"zstd_level": 1}}))
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    env.pop("XDG_CACHE_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", "--smoke", "--config", str(config),
                           "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] >= 1 and metrics["val_bpb"] > 0
    assert (tmp_path / "home" / ".cache" / "recurrence-search" / "smoke" / "v1" / smoke.MANIFEST_NAME).is_file()
    half = subprocess.run([sys.executable, "-m", "trainer", "train", "--smoke", "--config", str(config),
                           "--data", str(tmp_path), "--out", str(tmp_path / "out2")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert half.returncode == 2 and half.stderr.startswith("error: train: pass both --data and --tokenizer")
