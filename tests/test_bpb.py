import math

import torch

from trainer.bpb import bits_per_byte, byte_table, target_bytes
from trainer.run_config import from_dict
from trainer.data.shards import load_val_tokens
from trainer.evaluate import evaluate, windows
from trainer.model import GPT


def test_target_bytes_equal_the_decoded_text_bytes(tiny_corpus):
    sp = tiny_corpus["sp"]
    val = load_val_tokens(tiny_corpus["data"], tiny_corpus["vocab_size"])
    table = byte_table(sp, tiny_corpus["vocab_size"])
    counted = int(target_bytes(table, val[:-1], val[1:]).sum())
    expected = sum(len(doc.encode("utf-8")) for doc in tiny_corpus["val_docs"])
    assert counted == expected
    assert any(sp.is_byte(int(t)) for t in val)  # byte-fallback tokens really occur in this text


def test_leading_space_after_boundary_is_not_counted(tiny_corpus):
    sp = tiny_corpus["sp"]
    table = byte_table(sp, tiny_corpus["vocab_size"])
    piece = next(i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith("\u2581") and len(sp.id_to_piece(i)) > 2)
    word = sp.id_to_piece(piece)[1:]
    after_bos = target_bytes(table, torch.tensor([1]), torch.tensor([piece]))
    after_word = target_bytes(table, torch.tensor([piece]), torch.tensor([piece]))
    assert after_bos.item() == len(word.encode()) and after_word.item() == len(word.encode()) + 1


def test_bits_per_byte_formula():
    assert math.isclose(bits_per_byte(math.log(2) * 100, 50), 2.0)


def test_windows_cover_every_target_once():
    spans = windows(101, 32)
    covered = [s + i for s, n in spans for i in range(n)]
    assert covered == list(range(100))


def test_evaluate_matches_a_direct_computation(tiny_corpus):
    torch.manual_seed(0)
    cfg = from_dict({"model": {"vocab_size": 320, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "unique_blocks": 2}})
    model = GPT(cfg.model)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    val = load_val_tokens(tiny_corpus["data"], 320)[:300]
    table = byte_table(tiny_corpus["sp"], 320)
    result = evaluate(model, val, table, seq_len=64, batch_tokens=128, device=torch.device("cpu"))
    assert result.tokens == 299
    nats = 0.0
    for start, n in windows(len(val), 64):
        x, y = val[start : start + n][None], val[start + 1 : start + n + 1][None]
        nats += model(x, y, reduction="none").double().sum().item()
    assert math.isclose(result.sum_nats, nats, rel_tol=1e-6)
    assert result.bytes == int(target_bytes(table, val[:-1], val[1:]).sum())
