"""Sliding-window evaluation (train.eval_stride): every target once, with the context its window gives; stride =
seq_len is plain evaluation; the trainer reports it after the round trip."""
from __future__ import annotations

import pytest
import torch

from tests.trainer_runs import run
from trainer import run_config as config
from trainer.bpb import bits_per_byte, byte_table, target_bytes
from trainer.data.shards import load_val_tokens
from trainer.evaluate import evaluate, sliding_windows
from trainer.model import GPT


@pytest.mark.parametrize("num_tokens, seq_len, stride", [
    (1001, 64, 16), (1001, 64, 64), (1001, 64, 1), (65, 64, 8), (40, 64, 16), (300, 32, 7),
])
def test_every_target_is_scored_once_with_its_window_s_context(num_tokens, seq_len, stride):
    spans = sliding_windows(num_tokens, seq_len, stride)
    scored = [t for start, length, first in spans for t in range(start + first, start + length)]
    assert scored == list(range(num_tokens - 1))  # each target once, in order
    for k, (start, length, first) in enumerate(spans):
        assert start == k * stride and length == min(seq_len, num_tokens - 1 - start)
        if k:  # a later window scores what no earlier one did: its last `stride` targets (fewer at the end)
            assert length - first <= stride and first >= seq_len - stride


def model_and_data(tiny_corpus):
    torch.manual_seed(0)
    model = GPT(config.ModelConfig(vocab_size=320, model_dim=32, num_heads=2, num_kv_heads=1, unique_blocks=2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # outputs that depend on the context
    tokens = load_val_tokens(tiny_corpus["data"], 320)[:1001]
    return model, tokens, byte_table(tiny_corpus["sp"], 320)


def test_stride_equal_to_seq_len_is_plain_evaluation(tiny_corpus):
    model, tokens, table = model_and_data(tiny_corpus)
    plain = evaluate(model, tokens, table, 64, 256, torch.device("cpu"))
    # Consecutive windows by hand: every target once, after the tokens of its own window only.
    nats = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, 64):
            x, y = tokens[start : start + 64][None], tokens[start + 1 : start + 65][None]
            x = x[:, : y.shape[1]]
            nats += model(x, y, reduction="none").double().sum().item()
    assert evaluate(model, tokens, table, 64, 256, torch.device("cpu"), stride=64) == plain
    assert plain.tokens == len(tokens) - 1 and plain.sum_nats == pytest.approx(nats, rel=1e-9)


def test_a_smaller_stride_scores_each_token_once_with_its_window_s_context(tiny_corpus):
    model, tokens, table = model_and_data(tiny_corpus)
    seq_len, stride = 64, 16
    sliding = evaluate(model, tokens, table, seq_len, 256, torch.device("cpu"), stride=stride)
    # Each target alone: the model over its window, the nats at its own position.
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for start, length, first in sliding_windows(len(tokens), seq_len, stride):
            x, y = tokens[start : start + length][None], tokens[start + 1 : start + length + 1][None]
            nats += model(x, y, reduction="none").view(-1)[first:].double().sum().item()
            nbytes += int(target_bytes(table, x, y)[0, first:].sum())
    plain = evaluate(model, tokens, table, seq_len, 256, torch.device("cpu"))
    assert sliding.tokens == plain.tokens == len(tokens) - 1
    assert sliding.bytes == plain.bytes == nbytes  # the same targets after the same tokens
    assert sliding.sum_nats == pytest.approx(nats, rel=1e-9)
    assert sliding.val_bpb == pytest.approx(bits_per_byte(nats, nbytes), rel=1e-9)
    assert sliding.sum_nats != pytest.approx(plain.sum_nats, rel=1e-6)  # more context scores differently


def test_the_trainer_reports_the_sliding_score_after_the_round_trip(tiny_corpus, tiny_config_dict, tmp_path):
    tiny_config_dict["train"].update(eval_stride=8, max_steps=4)
    trainer, metrics, _ = run(tiny_corpus, tiny_config_dict, tmp_path)
    # The model holds the round trip's weights now: score them again by hand.
    again = evaluate(trainer.model, trainer.val_tokens, trainer.table, 32, 1024, torch.device("cpu"), stride=8)
    assert metrics.val_bpb_sliding == again.val_bpb and metrics.val_loss_sliding == again.val_loss
    assert metrics.val_bpb_sliding != metrics.val_bpb
    assert "val_bpb_sliding" in (tmp_path / "train.log").read_text()
    plain = run(tiny_corpus, {**tiny_config_dict, "train": {**tiny_config_dict["train"], "eval_stride": 0}},
                tmp_path / "plain")[1]
    assert plain.val_bpb_sliding is None and plain.val_bpb == metrics.val_bpb  # the plain figure is unchanged


@pytest.mark.parametrize("value", [-1, 33])
def test_the_stride_is_validated(tiny_config_dict, value):
    tiny_config_dict["train"]["eval_stride"] = value
    with pytest.raises(config.ConfigError, match=r"train.eval_stride: .* must be 0 \(off\) or a stride in 1..seq_len=32"):
        config.from_dict(tiny_config_dict)
