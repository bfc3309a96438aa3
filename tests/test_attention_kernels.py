"""benchmarks/attention_kernels.py on the CPU: every kernel checked against SDPA before it is timed."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from trainer.attention import ATTENTION_CHOICES

_SPEC = importlib.util.spec_from_file_location(
    "attention_kernels", Path(__file__).resolve().parents[1] / "benchmarks" / "attention_kernels.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

SHAPE = ["--batch", "2", "--seq-len", "32", "--heads", "4", "--kv-heads", "2", "--head-dim", "8",
         "--dtype", "float32", "--repeats", "1"]


def test_every_choice_gets_a_row_and_the_json_matches_the_table(tmp_path, capsys):
    out = tmp_path / "attention.json"
    assert bench.main(SHAPE + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [r["choice"] for r in data["rows"]] == list(ATTENTION_CHOICES)
    assert data["shape"]["kv_heads"] == 2 and data["device"] == "cpu"
    for row in data["rows"]:
        assert f"| {row['choice']} |" in printed
        if "ms" in row:  # timed only after agreeing with SDPA
            assert row["max_rel_error"] <= bench.TOLERANCE[torch.float32] and row["ms"] > 0
        else:
            assert row["note"]


def test_grouped_query_heads_match_repeated_heads():
    q, k, v = bench.inputs(2, 16, 4, 2, 8, torch.float32, torch.device("cpu"))
    grad = torch.randn_like(q.detach())
    grouped = bench.forward_backward(bench.sdpa_attention, q, k, v, grad)
    repeated = torch.nn.functional.scaled_dot_product_attention(
        q.detach(), k.detach().repeat_interleave(2, 1), v.detach().repeat_interleave(2, 1), is_causal=True)
    assert torch.allclose(grouped[0], repeated, atol=1e-6)


def test_a_kernel_that_disagrees_is_reported_not_timed(monkeypatch, capsys):
    def wrong(choice):  # attends without the causal mask: the future leaks in
        return "sdpa", lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))

    monkeypatch.setattr(bench, "pick_attention", wrong)
    assert bench.main(SHAPE + ["--kernels", "sdpa"]) == 0
    assert "disagrees with SDPA" in capsys.readouterr().out


def test_heads_must_divide(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--heads", "6", "--kv-heads", "4"])
    assert exit_info.value.code == 2 and "not a multiple of --kv-heads" in capsys.readouterr().err
