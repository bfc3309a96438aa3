import torch

from trainer.run_config import from_dict
from trainer.model import GPT


def make(**model):
    base = {"vocab_size": 64, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2, "unique_blocks": 2}
    return GPT(from_dict({"model": {**base, **model}}).model)


def randomize(model):
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    return model


def test_loss_shape_and_value_at_init():
    model = make()
    x = torch.randint(0, 64, (2, 16))
    loss = model(x, x)
    assert loss.ndim == 0 and abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.2
    assert model(x, x, reduction="none").shape == (32,)


def test_attention_is_causal():
    model = randomize(make(unique_blocks=2, virtual_layers=[0, 1, 0, 1]))
    x = torch.randint(0, 64, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 7) % 64
    assert torch.allclose(model.logits(x)[0, :8], model.logits(y)[0, :8], atol=1e-5)
    assert not torch.allclose(model.logits(x)[0, 8:], model.logits(y)[0, 8:])


def test_repeats_run_the_same_weights_and_both_positions_train_them():
    model = randomize(make(unique_blocks=2, virtual_layers=[0, 1, 0, 1]))
    calls = []
    hook = model.attns["0"].register_forward_hook(lambda *a: calls.append(1))
    x = torch.randint(0, 64, (2, 8))
    model(x, x).backward()
    hook.remove()
    assert len(calls) == 2  # block 0 ran at positions 0 and 2
    assert model.attns["0"].c_q.weight.grad.abs().sum() > 0
    assert all(layer.attn_scale.grad is not None for layer in model.layers)  # scalars are per virtual layer


def test_untied_mlps_are_distinct_modules():
    model = make(unique_blocks=2, virtual_layers=[0, 1, 0, 1], untie_mlp="full")
    assert len(model.attns) == 2 and len(model.mlps) == 4
    assert [l.mlp for l in model.schedule] == [0, 1, 2, 3]


def test_depth_signals_change_the_output_only_when_trained():
    for signal in ("learned", "sinusoidal"):
        model = randomize(make(unique_blocks=1, virtual_layers=[0, 0, 0], depth_signal=signal))
        x = torch.randint(0, 64, (1, 8))
        with torch.no_grad():
            if signal == "learned":
                model.depth_embed.zero_()
            else:
                model.depth_gain.zero_()
            silent = model.logits(x)
            if signal == "learned":
                model.depth_embed[1].fill_(0.5)
            else:
                model.depth_gain[1] = 0.5
            assert not torch.allclose(silent, model.logits(x))


def test_leaky_activation_differs():
    a, b = randomize(make()), randomize(make(activation="leaky_relu2"))
    x = torch.randint(0, 64, (1, 8))
    assert not torch.allclose(a.logits(x), b.logits(x))


def test_batched_orthogonalization_matches_one_at_a_time():
    from trainer.optim import orthogonalize

    torch.manual_seed(0)
    grads = torch.randn(3, 16, 40)
    batched = orthogonalize(grads, 5).float()
    for i in range(3):
        single = orthogonalize(grads[i], 5).float()
        assert torch.allclose(batched[i], single, atol=2e-2)
    # Newton-Schulz drives singular values toward 1 (roughly: it is a fast, loose iteration).
    s = torch.linalg.svdvals(batched[0])
    assert s.min() > 0.5 and s.max() < 1.3


def test_orthogonalization_runs_in_bf16_on_gpus_and_float32_on_the_cpu(monkeypatch):
    """A CPU's bf16 matmul is many times slower than its float32 one (a record-sized smoke step took minutes)."""
    from trainer import optim

    assert optim.update_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert optim.update_dtype(torch.device("cpu")) == torch.float32
    torch.manual_seed(0)
    grad = torch.randn(16, 40)
    out = optim.orthogonalize(grad, 5)
    assert out.dtype == torch.float32
    # The CPU's float32 update agrees with the bf16 one a GPU computes, to bf16's rounding compounded over the
    # five steps (0.032 at most here, on entries up to 0.57).
    monkeypatch.setattr(optim, "update_dtype", lambda device: torch.bfloat16)
    on_gpu = optim.orthogonalize(grad, 5)
    assert on_gpu.dtype == torch.bfloat16 and torch.allclose(out, on_gpu.float(), atol=0.05)


def test_forward_traces_as_one_graph_for_torch_compile():
    # A graph break inside the virtual-layer loop makes torch.compile run the whole forward eagerly
    # (seen on an H100: compiled 627 ms/step vs eager 637). Recurrent schedules must trace in one piece.
    import torch._dynamo

    torch._dynamo.reset()
    model = make(unique_blocks=2, virtual_layers=[0, 1, 0, 1, 0], untie_mlp=[4], depth_signal="sinusoidal")
    x = torch.randint(0, 64, (2, 8))
    explained = torch._dynamo.explain(model)(x, x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_every_attention_choice_gives_the_same_causal_output_on_cpu():
    # Pinned SDPA backends are CUDA-only; on the CPU every choice must fall back to the same math.
    from trainer.attention import pick_attention
    from trainer.attention import ATTENTION_CHOICES

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 2, 10, 8), torch.randn(2, 2, 10, 8)
    reference = pick_attention("sdpa")[1](q, k, v)
    for choice in ATTENTION_CHOICES:
        try:
            name, attend = pick_attention(choice)
        except ValueError as exc:  # 'flash' without flash-attn installed says how to get it
            assert choice == "flash" and "pip install" in str(exc)
            continue
        assert torch.allclose(attend(q, k, v), reference, atol=1e-6), name


def test_pinned_sdpa_backend_traces_without_graph_breaks():
    import torch._dynamo

    torch._dynamo.reset()
    model = GPT(from_dict({"model": {"vocab_size": 64, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
                                     "unique_blocks": 2}}).model, attention="sdpa_cudnn")
    x = torch.randint(0, 64, (2, 8))
    explained = torch._dynamo.explain(model)(x, x)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_bf16_blocks_keep_a_float32_residual_stream_and_trace_as_one_graph():
    # compute_dtype only moves the blocks' work to bf16; the residual stream stays float32, so the bf16
    # loss stays close to the float32 one. The cast must not break the compiled graph either.
    import torch._dynamo

    cfg = from_dict({"model": {"vocab_size": 64, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
                               "unique_blocks": 2, "virtual_layers": [0, 1, 0]}}).model
    full = randomize(GPT(cfg))
    half = GPT(cfg, compute_dtype=torch.bfloat16)
    half.load_state_dict(full.state_dict())
    x = torch.randint(0, 64, (2, 16))
    seen = {}
    half.mlps[0].register_forward_hook(lambda m, i, o: seen.update(mlp_in=i[0].dtype))
    assert abs(half(x, x).item() - full(x, x).item()) < 0.05
    assert seen["mlp_in"] == torch.bfloat16 and half.hidden(x).dtype == torch.float32
    torch._dynamo.reset()
    explained = torch._dynamo.explain(half)(x, x)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_bf16_residual_stream_is_an_option_and_stays_close():
    cfg = from_dict({"model": {"vocab_size": 64, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
                               "unique_blocks": 2}}).model
    full = randomize(GPT(cfg))
    half = GPT(cfg, compute_dtype=torch.bfloat16, residual_dtype=torch.bfloat16)
    half.load_state_dict(full.state_dict())
    x = torch.randint(0, 64, (2, 16))
    assert half.hidden(x).dtype == torch.bfloat16
    assert abs(half(x, x).item() - full(x, x).item()) < 0.1


def _unique_graphs_after_a_step(model: GPT) -> int:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model.compile_layers(backend="eager")
    x = torch.randint(0, 64, (2, 8))
    model(x, x).backward()
    return counters["stats"]["unique_graphs"]


def test_regional_compilation_reuses_one_layer_graph_whatever_the_depth():
    # compile_scope=layers exists to make compile time independent of depth: the layer graph is shared by
    # every block, so a 13-virtual-layer model must compile no more graphs than a 6-layer one.
    import torch._dynamo

    shallow = _unique_graphs_after_a_step(make(unique_blocks=6))
    deep = _unique_graphs_after_a_step(
        make(unique_blocks=11, virtual_layers=[0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10], depth_signal="learned")
    )
    assert deep == shallow
    # Four layer variants (the first layer, where x is x0; no skip; the skip that is x itself; a skip)
    # and the loss head: never one graph per layer.
    assert deep == 5
    torch._dynamo.reset()


def test_regional_compilation_computes_what_the_eager_model_computes():
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = make(unique_blocks=2, virtual_layers=[0, 1, 0, 1, 0], untie_mlp=[4], depth_signal="sinusoidal")
    regional = make(unique_blocks=2, virtual_layers=[0, 1, 0, 1, 0], untie_mlp=[4], depth_signal="sinusoidal")
    regional.load_state_dict(eager.state_dict())
    regional.compile_layers(backend="eager")
    x = torch.randint(0, 64, (2, 8))
    eager(x, x).backward()
    regional(x, x).backward()
    for (name, a), b in zip(eager.named_parameters(), regional.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    with torch.no_grad():  # evaluation stays eager by default and gives the same per-token losses
        assert torch.allclose(eager(x, x, reduction="none"), regional(x, x, reduction="none"), atol=1e-6)
    torch._dynamo.reset()


def _kurtosis(w: torch.Tensor) -> float:
    x = w.detach().flatten().double()
    x = x - x.mean()
    return float((x**4).mean() / (x**2).mean() ** 2)


def test_weight_init_draws_gaussian_or_uniform_matrices_with_the_same_std():
    torch.manual_seed(0)
    normal = make(model_dim=256, num_heads=4, num_kv_heads=2, weight_init="normal")
    torch.manual_seed(0)
    uniform = make(model_dim=256, num_heads=4, num_kv_heads=2, weight_init="uniform")
    for name in ("attns.0.c_q.weight", "attns.1.c_v.weight", "mlps.0.fc.weight"):
        n, u = normal.get_parameter(name), uniform.get_parameter(name)
        fan_in = n.shape[1]
        assert abs(n.std().item() * (3 * fan_in) ** 0.5 - 1) < 0.03 and abs(u.std().item() * (3 * fan_in) ** 0.5 - 1) < 0.03
        assert abs(_kurtosis(n) - 3.0) < 0.15 and abs(_kurtosis(u) - 1.8) < 0.1  # Gaussian vs uniform
        assert u.abs().max() <= fan_in**-0.5 and n.abs().max() > fan_in**-0.5
    for model in (normal, uniform):  # output projections start at zero either way
        assert not model.get_parameter("attns.0.proj.weight").any() and not model.get_parameter("mlps.1.proj.weight").any()


def test_unknown_weight_init_is_rejected_with_the_choices():
    import pytest

    from trainer.model_config import ConfigError

    with pytest.raises(ConfigError, match=r"model.weight_init.*normal.*uniform"):
        make(weight_init="xavier")


# Delayed recurrence: the schedule without its repeats until set_recurrence(True).
LOOPED = {"unique_blocks": 4, "virtual_layers": [0, 1, 2, 1, 2, 3], "untie_mlp": [3, 4], "ln_scale": True,
          "xsa_last": 4, "value_embed_dim": 6, "value_embed_layers": [3], "attention_off_blocks": [0],
          "parallel_from_block": 3, "skip_gates": True, "smear": True, "bigram_buckets": 17, "bigram_dim": 8}
# The same model written without repeats: XSA from depth 2 either way (6 - 4 = 4 - 2).
UNLOOPED = {**LOOPED, "virtual_layers": [0, 1, 2, 3], "untie_mlp": "none", "xsa_last": 2}


def test_recurrence_off_runs_the_model_without_its_repeats():
    looped = randomize(make(**LOOPED))
    unlooped = make(**UNLOOPED)
    kept = [0, 1, 2, 5]  # configured positions that run while recurrence is off
    state = {}
    for name, tensor in looped.state_dict().items():
        if name.startswith("layers."):
            _, position, rest = name.split(".", 2)
            if int(position) in kept:
                state[f"layers.{kept.index(int(position))}.{rest}"] = tensor
        elif name in ("skip_weights", "skip_gates"):
            state[name] = tensor[:2]  # 4 running layers use the first 2 of the 3 skips
        elif not name.startswith(("mlps.4.", "mlps.5.")):  # the repeats' own MLPs do not run
            state[name] = tensor
    unlooped.load_state_dict(state)
    x = torch.randint(0, 64, (2, 12))
    assert looped.has_repeats and not unlooped.has_repeats
    looped.set_recurrence(False)
    assert [s.position for s in looped.steps] == kept and [s.depth for s in looped.steps] == [0, 1, 2, 3]
    assert torch.equal(looped.logits(x), unlooped.logits(x))
    looped.set_recurrence(True)
    assert len(looped.steps) == 6 and not torch.allclose(looped.logits(x), unlooped.logits(x))


def test_switching_recurrence_on_copies_the_repeats_mlps_once_and_keeps_every_scalar():
    model = randomize(make(**LOOPED))
    scalars = {p: [id(t) for t in model.layers[p].parameters()] for p in range(6)}
    model.set_recurrence(False)
    with torch.no_grad():  # training while off moves the block MLPs; the repeats' own MLPs (4, 5) do not run
        for p in model.mlps[1].parameters():
            p.add_(1.0)
    x = torch.randint(0, 64, (2, 8))
    model(x, x).backward()
    assert all(p.grad is None for m in (4, 5) for p in model.mlps[m].parameters())
    model.set_recurrence(True)
    for own, block in ((4, 1), (5, 2)):  # positions 3, 4 repeat blocks 1, 2
        for a, b in zip(model.mlps[own].parameters(), model.mlps[block].parameters()):
            assert torch.equal(a, b) and a is not b
    with torch.no_grad():
        model.mlps[4].fc.weight.mul_(2.0)
    trained = model.mlps[4].fc.weight.clone()
    model.set_recurrence(True)  # already on: nothing is copied again
    model(x, x)
    assert torch.equal(model.mlps[4].fc.weight, trained)
    assert not torch.equal(model.mlps[4].fc.weight, model.mlps[1].fc.weight)
    assert {p: [id(t) for t in model.layers[p].parameters()] for p in range(6)} == scalars


def test_a_schedule_without_repeats_ignores_set_recurrence():
    model = randomize(make(unique_blocks=3))
    x = torch.randint(0, 64, (1, 8))
    before = model.logits(x)
    model.set_recurrence(False)
    assert not model.has_repeats and torch.equal(model.logits(x), before)
