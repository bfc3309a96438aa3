"""Shared test fixtures: a tiny SentencePiece tokenizer and tiny shards, all made here from generated text."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from trainer.data.shards import write_shard

WORDS = (
    "the a of to and in is was for on with as by at from that this it be are or an which one all "
    "recurrence depth block layer shared weight model byte token search frontier budget kernel "
    "small large quick brown fox jumps over lazy dog river mountain city garden window paper "
    "naïve café résumé über straße 東京 ümlaut déjà vu"
).split()
TINY_VOCAB = 320
BOS_ID = 1


def pytest_terminal_summary(terminalreporter, config):
    """Name the random order's seed at the end, even under -q, so a failing order can be run again."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"tests ran in random order: run this order again with --randomly-seed={seed}")


def _torch_and_process_state() -> dict:
    return {"cwd": os.getcwd(), "threads": torch.get_num_threads(), "dtype": torch.get_default_dtype(),
            "grad": torch.is_grad_enabled(), "deterministic": torch.are_deterministic_algorithms_enabled()}


@pytest.fixture(autouse=True)
def same_start_in_any_order():
    """Every test starts from the same torch RNG state, and finds the cwd and torch's global settings as the
    previous test found them, so the suite passes in any order (pytest-randomly seeds random and numpy)."""
    before = _torch_and_process_state()
    torch.manual_seed(0)
    yield
    after = _torch_and_process_state()
    if after != before:
        os.chdir(before["cwd"])
        torch.set_num_threads(before["threads"])
        torch.set_default_dtype(before["dtype"])
        torch.set_grad_enabled(before["grad"])
        torch.use_deterministic_algorithms(before["deterministic"])
        changed = sorted(k for k in before if before[k] != after[k])
        pytest.fail(f"the test changed {changed} and left them changed: restore them (monkeypatch, a context "
                    "manager or try/finally) so the tests after it see the same process", pytrace=False)


def make_documents(count: int, seed: int) -> list[str]:
    """Random sentences over a fixed word list, with some non-ASCII words for byte fallback."""
    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]))
        docs.append(" ".join(sentences))
    return docs


def train_tokenizer(text_path: Path, prefix: Path, vocab_size: int = TINY_VOCAB) -> Path:
    """Train a BPE model with the challenge's special-token ids and byte fallback."""
    spm.SentencePieceTrainer.train(
        input=str(text_path),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.98,  # leaves the rarest characters to byte fallback, so it is exercised
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    return Path(f"{prefix}.model")


def encode_documents(sp: spm.SentencePieceProcessor, docs: list[str]) -> np.ndarray:
    """Each document as BOS followed by its pieces, concatenated, as the challenge shards are."""
    ids: list[int] = []
    for doc in docs:
        ids.append(BOS_ID)
        ids.extend(sp.encode(doc))
    return np.asarray(ids, dtype=np.int64)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict:
    """A tokenizer, a data dir with two train shards and one val shard, and the val documents."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    train_docs, val_docs = make_documents(1500, seed=1), make_documents(60, seed=2)
    text = root / "train.txt"
    text.write_text("\n".join(train_docs))
    tokenizer = train_tokenizer(text, root / "tok")
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    data = root / "data"
    data.mkdir()
    train_ids = encode_documents(sp, train_docs)
    half = len(train_ids) // 2
    write_shard(data / "fineweb_train_000000.bin", train_ids[:half])
    write_shard(data / "fineweb_train_000001.bin", train_ids[half:])
    write_shard(data / "fineweb_val_000000.bin", encode_documents(sp, val_docs))
    return {"tokenizer": tokenizer, "data": data, "val_docs": val_docs, "vocab_size": TINY_VOCAB, "sp": sp}


TINY_MODEL = {
    "vocab_size": TINY_VOCAB,
    "model_dim": 32,
    "num_heads": 2,
    "num_kv_heads": 1,
    "mlp_mult": 2.0,
    "unique_blocks": 2,
}
TINY_TRAIN = {
    "seq_len": 32,
    "batch_tokens": 512,
    "micro_batch_tokens": 256,
    "max_steps": 12,
    "budget_s": 3600.0,  # max_steps ends every run, however busy the CPU: tests about time use virtual_clock
    "warmdown_steps": 4,
    "compile": False,
    "compile_warmup_steps": 0,
    "val_prefix_tokens": 256,
    "val_batch_tokens": 1024,
    "log_every_steps": 4,
}


@pytest.fixture
def tiny_config_dict() -> dict:
    """A run config dict for a model that trains in about a second on the CPU."""
    return {"model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "export": {}}


class VirtualClock:
    """time.perf_counter for a test: it stands still until advanced, so training seconds are what the test says."""

    START_S = 1024.0  # binary fractions of a second added to it stay exact

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.now_s, self._monkeypatch = self.START_S, monkeypatch

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self.now_s += seconds

    def steps_take(self, step_s: float) -> None:
        """From now on, every training step of a Trainer (warm-up, training, cooldown) takes step_s seconds."""
        from trainer.trainer import Trainer

        run_step = Trainer.train_step

        def timed_step(trainer, *args, **kwargs):
            result = run_step(trainer, *args, **kwargs)
            self.advance(step_s)
            return result

        self._monkeypatch.setattr(Trainer, "train_step", timed_step)


@pytest.fixture
def virtual_clock(monkeypatch) -> VirtualClock:
    """Replace time.perf_counter (what the trainer times itself with) by a VirtualClock for this test.

    The trainer's budget, report times and phase timings then follow the steps a test runs, not the load of the
    machine (benchmarks/smoke_equivalence.py runs the trainer on a virtual clock for the same reason).
    """
    clock = VirtualClock(monkeypatch)
    monkeypatch.setattr(time, "perf_counter", clock)
    return clock
