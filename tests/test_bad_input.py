"""Bad data, tokenizers and settings: each gets one clear line naming the problem and the fix, and a non-zero exit,
instead of a hang, a raw traceback or a run that launches anyway."""
from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TINY_MODEL, TINY_TRAIN
from trainer.bpb import TokenizerError, load_sentencepiece
from trainer.data.check import check_data
from trainer.data.shards import HEADER_BYTES, ShardError, TokenStream, load_val_tokens, write_shard
from trainer.model_config import ConfigError, ExportConfig

REPO = Path(__file__).resolve().parents[1]


def run_cli(*argv: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m <argv>` from this checkout; fails the test (rather than hanging) if it does not end in time."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed: its stderr must be exactly 'error: ...\\n'."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


def copy_corpus(corpus: dict, folder: Path) -> Path:
    """A private copy of the tiny corpus's shard folder that a test may damage."""
    shutil.copytree(corpus["data"], folder)
    return folder


def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": dict(TINY_MODEL), "train": {**TINY_TRAIN, "max_steps": 2}}))
    return path


# ---- shards -------------------------------------------------------------------------------------------------

def test_train_shards_with_no_tokens_are_refused_not_looped_over(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.array([], dtype=np.int64))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.array([], dtype=np.int64))
    start = time.monotonic()
    with pytest.raises(ShardError, match="hold no tokens.*data build"):
        TokenStream(tmp_path, 1024)
    assert time.monotonic() - start < 5
    # One empty shard among others is skipped, as before.
    write_shard(tmp_path / "fineweb_train_000002.bin", np.arange(5))
    stream = TokenStream(tmp_path, 1024)
    assert stream.take(7).tolist() == [0, 1, 2, 3, 4, 0, 1]


def test_val_shards_with_no_tokens_are_refused(tmp_path):
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array([], dtype=np.int64))
    with pytest.raises(ShardError, match="fineweb_val_.*hold no tokens"):
        load_val_tokens(tmp_path, 1024)


def test_trainer_train_on_an_empty_train_shard_exits_with_one_line(tiny_corpus, tmp_path):
    data = copy_corpus(tiny_corpus, tmp_path / "data")
    for shard in data.glob("fineweb_train_*.bin"):
        write_shard(shard, np.array([], dtype=np.int64))  # a valid header that says 0 tokens
    proc = run_cli("trainer", "train", "--config", str(tiny_config(tmp_path)), "--data", str(data),
                   "--tokenizer", str(tiny_corpus["tokenizer"]), "--out", str(tmp_path / "out"), "--device", "cpu",
                   timeout=90)  # it used to spin at 100% CPU forever, ignoring the budget
    assert "hold no tokens" in error_line(proc)


# ---- tokenizers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"\x08\x96\x01 not a model at all" * 20, b""])
def test_a_file_that_is_no_sentencepiece_model_is_named(tmp_path, content):
    bad = tmp_path / "bad.model"
    bad.write_bytes(content)
    with pytest.raises(TokenizerError, match=r"bad\.model: .*SentencePiece") as info:
        load_sentencepiece(bad)
    assert "\n" not in str(info.value)


def test_trainer_train_with_a_bad_tokenizer_exits_with_one_line(tiny_corpus, tmp_path):
    bad = tmp_path / "tok.model"
    bad.write_bytes(b"<html>this is not a tokenizer</html>")
    proc = run_cli("trainer", "train", "--config", str(tiny_config(tmp_path)), "--data", str(tiny_corpus["data"]),
                   "--tokenizer", str(bad), "--out", str(tmp_path / "out"), "--device", "cpu")
    line = error_line(proc)
    assert "tok.model: not a SentencePiece model" in line and "--tokenizer" in line


def test_data_build_with_a_bad_tokenizer_exits_with_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n")
    bad = tmp_path / "tok.model"
    bad.write_bytes(b"\x00" * 64)
    proc = run_cli("trainer", "data", "build", "--text", str(tmp_path / "*.txt"), "--tokenizer", str(bad),
                   "--out", str(tmp_path / "out"))
    assert "tok.model: not a SentencePiece model" in error_line(proc)


# ---- the data check a search runs before any trial ------------------------------------------------------------

def test_check_data_summarizes_a_good_folder(tiny_corpus):
    summary = check_data(tiny_corpus["data"], tiny_corpus["tokenizer"], vocab_size=320)
    tokens = sum((p.stat().st_size - HEADER_BYTES) // 2 for p in Path(tiny_corpus["data"]).glob("fineweb_train_*"))
    assert (summary.train_shards, summary.val_shards, summary.tokenizer_pieces) == (2, 1, 320)
    assert summary.train_tokens == tokens and summary.val_tokens > 0


def test_check_data_names_each_problem(tiny_corpus, tmp_path):
    tok = tiny_corpus["tokenizer"]
    with pytest.raises(ShardError, match="no such folder"):
        check_data(tmp_path / "missing", tok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no files match fineweb_train_"):
        check_data(tmp_path / "empty", tok)
    with pytest.raises(TokenizerError, match="320 pieces but the model's vocab_size is 256"):
        check_data(tiny_corpus["data"], tok, vocab_size=256)
    data = copy_corpus(tiny_corpus, tmp_path / "cut")
    shard = data / "fineweb_train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match="fineweb_train_000001.bin: header says .* truncated"):
        check_data(data, tok)
    data = copy_corpus(tiny_corpus, tmp_path / "other")
    write_shard(data / "fineweb_val_000000.bin", np.array([1, 5, 900]))  # made with a bigger tokenizer
    with pytest.raises(ShardError, match="token id 900 but the tokenizer has 320 pieces"):
        check_data(data, tok)


@pytest.mark.parametrize("damage", ["tokenizer", "empty_folder", "truncated_shard", "vocab"])
def test_search_run_refuses_bad_data_before_any_trial(tiny_corpus, tmp_path, damage):
    from tests.search_fixtures import write_space

    data, tok = tiny_corpus["data"], tiny_corpus["tokenizer"]
    space = write_space(tmp_path)
    expected = {"tokenizer": "not a SentencePiece model", "empty_folder": "no files match fineweb_train_",
                "truncated_shard": "truncated or corrupt", "vocab": "pieces but the model's vocab_size is 256"}[damage]
    if damage == "tokenizer":
        tok = tmp_path / "tok.model"
        tok.write_text("not a model")
    elif damage == "empty_folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif damage == "truncated_shard":
        data = copy_corpus(tiny_corpus, tmp_path / "cut")
        shard = data / "fineweb_val_000000.bin"
        shard.write_bytes(shard.read_bytes()[:-7])
    else:
        spec = yaml.safe_load(space.read_text())
        spec["base"]["model"]["vocab_size"] = 256
        space.write_text(yaml.safe_dump(spec))
    proc = run_cli("search", "run", "--space", str(space), "--name", "bad", "--storage", str(tmp_path / "runs"),
                   "--trials", "2", "--budget-s", "2", "--ray-address", "local", "--data", str(data),
                   "--tokenizer", str(tok), cwd=tmp_path)
    assert expected in error_line(proc)
    assert not (tmp_path / "runs" / "bad" / "study.db").exists()  # nothing was launched


# ---- the download's errors --------------------------------------------------------------------------------------

class _DropsMidTransfer(http.server.BaseHTTPRequestHandler):
    """A hub look-alike whose downloads break off after 1,000 of their 100,000 bytes."""

    protocol_version = "HTTP/1.1"
    size = 100_000

    def _headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", '"etag"')
        self.end_headers()

    def do_HEAD(self) -> None:
        self._headers()

    def do_GET(self) -> None:
        self._headers()
        self.wfile.write(b"x" * 1000)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def test_a_transfer_cut_midway_is_one_line_with_resume_and_offline_hints(tmp_path):
    # huggingface_hub 2.x raises its HTTP client's transport errors (not OSError) once its own retries are spent.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropsMidTransfer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "out"
        out.mkdir()
        (out / "fineweb_val_000000.bin").write_bytes(b"kept from before")
        proc = run_cli("trainer", "data", "download", "--train-shards", "1", "--out", str(out),
                       "--endpoint", f"http://127.0.0.1:{server.server_address[1]}", timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]  # huggingface_hub logs its retries above it
    assert last.startswith("error: ") and "Traceback" not in proc.stderr
    assert "downloading datasets/manifest.json failed (RemoteProtocolError" in last
    assert "rerun the same command to resume" in last and "trainer data build" in last and "--data" in last
    assert (out / "fineweb_val_000000.bin").read_bytes() == b"kept from before"


# ---- settings -----------------------------------------------------------------------------------------------------

def test_a_negative_or_zero_byte_limit_is_refused():
    for limit in (-1, 0):
        with pytest.raises(ConfigError, match="export.limit_bytes"):
            ExportConfig(limit_bytes=limit).validate()
    ExportConfig(limit_bytes=1).validate()


def test_data_is_ignored_by_git():
    proc = subprocess.run(["git", "check-ignore", "-q", "data/sp1024/fineweb_train_000000.bin"], cwd=REPO)
    assert proc.returncode == 0
