"""trainer.flash_op: a forward/backward kernel pair as custom ops matches SDPA and compiles as one graph.

flash-attn-4 runs only on Hopper/Blackwell GPUs, so its kernels are stood in for here by the same two
functions written out in plain tensor math (the causal softmax forward with its log-sum-exp, and the
backward from the saved output and log-sum-exp, as flash attention computes it).
"""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from trainer import attention
from trainer.flash_op import causal_attention_op, flash_attn_4


ATOL = 1e-5  # float32 throughout, as the kernels' log-sum-exp


def _repeat_heads(t, heads):
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def reference_forward(q, k, v, causal=True, return_lse=True):
    """out (B, T, H, D) and lse (B, H, T) of causal attention, from the scores (float32 inputs)."""
    assert causal and return_lse
    heads, scale = q.shape[2], q.shape[-1] ** -0.5
    scores = torch.einsum("bthd,bshd->bhts", q, _repeat_heads(k, heads)) * scale
    t = q.shape[1]
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    lse = scores.logsumexp(-1)
    probs = (scores - lse[..., None]).exp()
    out = torch.einsum("bhts,bshd->bthd", probs, _repeat_heads(v, heads))
    return out, lse, None, None, None


def reference_backward(q, k, v, out, dout, lse, causal=True):
    """dq, dk, dv from the saved output and log-sum-exp; grouped heads summed into their KV head."""
    assert causal
    (batch, t, heads, dim), kv_heads = q.shape, k.shape[2]
    scale = dim ** -0.5
    k_rep, v_rep = _repeat_heads(k, heads), _repeat_heads(v, heads)
    scores = torch.einsum("bthd,bshd->bhts", q, k_rep) * scale
    probs = (scores - lse[..., None]).exp().masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), 0.0)
    dprobs = torch.einsum("bthd,bshd->bhts", dout, v_rep)
    delta = (dout * out).sum(-1).transpose(1, 2)  # (B, H, T)
    dscores = probs * (dprobs - delta[..., None])
    dq = torch.einsum("bhts,bshd->bthd", dscores, k_rep) * scale
    dk = torch.einsum("bhts,bthd->bshd", dscores, q) * scale
    dv = torch.einsum("bhts,bthd->bshd", probs, dout)
    group = heads // kv_heads
    fold = lambda g: g.view(batch, t, kv_heads, group, dim).sum(3)  # noqa: E731
    return dq, fold(dk), fold(dv)


def _inputs(heads=4, kv_heads=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((2, 12, heads, 8), (2, 12, kv_heads, 8), (2, 12, kv_heads, 8))
    return [torch.randn(s, generator=gen, requires_grad=True) for s in shapes]


def _sdpa_bthd(q, k, v):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                         enable_gqa=True)
    return out.transpose(1, 2)


def _reference_op():
    return causal_attention_op(
        "test_reference", lambda q, k, v: reference_forward(q, k, v)[:2], reference_backward)


def _value_and_grads(fn, q, k, v):
    for t in (q, k, v):
        t.grad = None
    out = fn(q, k, v)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()]


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_the_op_matches_sdpa_values_and_gradients(kv_heads):
    q, k, v = _inputs(kv_heads=kv_heads)
    got = _value_and_grads(_reference_op(), q, k, v)
    want = _value_and_grads(_sdpa_bthd, q, k, v)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.allclose(g, w, atol=ATOL)


def test_the_op_compiles_as_one_graph_with_the_same_gradients():
    op = _reference_op()
    layer = lambda q, k, v: op(q * 2, k, v).tanh()  # noqa: E731
    q, k, v = _inputs()
    want = _value_and_grads(layer, q, k, v)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    got = _value_and_grads(compiled, q, k, v)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=ATOL)


def test_non_contiguous_inputs_and_output_gradient_reach_the_kernels_contiguous():
    seen = []

    def forward(q, k, v):
        seen.append(all(t.is_contiguous() for t in (q, k, v)))
        return reference_forward(q, k, v)[:2]

    def backward(q, k, v, out, dout, lse):
        seen.append(dout.is_contiguous())
        return reference_backward(q, k, v, out, dout, lse)

    op = causal_attention_op("test_contiguous", forward, backward)
    q, k, v = _inputs()
    bhtd = [t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v)]
    out = op(*(t.transpose(1, 2) for t in bhtd))  # (B, T, H, D) views of (B, H, T, D) storage
    out.transpose(1, 2).sum().backward()
    assert seen == [True, True] and bhtd[1].grad.shape == (2, 2, 12, 8)


def test_a_name_is_registered_once():
    assert _reference_op() is _reference_op()


@pytest.fixture
def stand_in_flash_attn_4(monkeypatch):
    """flash-attn-4's interface module with the reference kernels under its private names."""
    interface = types.ModuleType("flash_attn.cute.interface")
    interface._flash_attn_fwd, interface._flash_attn_bwd = reference_forward, reference_backward
    cute = types.ModuleType("flash_attn.cute")
    cute.interface = interface
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)


def test_flash_attn_4_passes_its_kernels_causal_and_keeps_out_lse_and_three_gradients(stand_in_flash_attn_4):
    q, k, v = _inputs()
    got = _value_and_grads(flash_attn_4(), q, k, v)
    want = _value_and_grads(_sdpa_bthd, q, k, v)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=ATOL)


def test_train_attention_flash_picks_the_op_where_flash_attn_4_imports(stand_in_flash_attn_4, monkeypatch):
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the CPU guard takes SDPA otherwise
    name, attend = attention.pick_attention("flash")
    q, k, v = (t.detach().transpose(1, 2) for t in _inputs())  # the model's (B, H, T, D)
    assert name == "flash"
    assert torch.allclose(attend(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                          atol=ATOL)


def test_without_flash_attn_4_flash_is_refused_and_auto_takes_sdpa(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    with pytest.raises(ValueError, match="not installed"):
        attention.pick_attention("flash")
    assert attention.pick_attention("auto")[0] == "sdpa"


@pytest.fixture
def failing_flash_attn(monkeypatch):
    """A flash-attn whose kernels do not run on this device: its function raises as an unsupported GPU would."""
    cute = types.ModuleType("flash_attn.cute")

    def flash_attn_func(q, k, v, causal=False):
        raise RuntimeError("no kernel for this architecture\nmore detail")

    cute.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", None)  # no private kernels: the public function


HEADS = (4, 2, 8)


def test_auto_tries_flash_once_and_falls_back_to_sdpa_saying_why(failing_flash_attn):
    name, attend = attention.pick_attention("auto", HEADS, torch.device("cpu"))
    assert name == "sdpa (flash-attn failed: RuntimeError: no kernel for this architecture)"
    assert attend is attention.sdpa_attention
    with pytest.raises(ValueError, match=r"'flash' asks for flash-attn, which fails here \(RuntimeError: no kernel"):
        attention.pick_attention("flash", HEADS, torch.device("cpu"))
    assert attention.pick_attention("auto")[0] == "flash"  # not tried without a device: taken as installed


def test_a_flash_attn_that_runs_passes_the_try(stand_in_flash_attn_4):
    assert attention.pick_attention("auto", HEADS, torch.device("cpu"))[0] == "flash"
