"""The model techniques of the 2026-03-31 recurrence record, each checked against its formula on tiny CPU models."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainer import artifact
from trainer.embeddings import bigram_bucket, smear
from trainer.model import GPT, MLP, Attention, LayerScalars, Rotary, apply_rotary, exclude_own_value, join_skip
from trainer.model import parallel_layer, rms_norm, virtual_layer
from trainer.model_config import ConfigError
from trainer.attention import sdpa_attention
from trainer.run_config import from_dict

BASE = {"vocab_size": 64, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2, "unique_blocks": 2}
# Every technique at once: blocks 1,2 looped, repeats with their own MLPs, no attention in block 0, lanes from block 3.
ALL_ON = {
    "unique_blocks": 5, "virtual_layers": [0, 1, 2, 1, 2, 3, 4], "untie_mlp": [3, 4], "activation": "leaky_relu2",
    "rope_dims": 4, "ln_scale": True, "xsa_last": 5, "bigram_buckets": 31, "bigram_dim": 12, "value_embed_dim": 8,
    "value_embed_layers": [4, 5], "attention_off_blocks": [0], "parallel_from_block": 3, "skip_gates": True,
    "smear": True, "weight_init": "orthogonal",
}


def cfg_of(**model):
    return from_dict({"model": {**BASE, **model}}).model


def make(seed=0, **model):
    torch.manual_seed(seed)
    return GPT(cfg_of(**model))


def randomize(model, seed=0, std=0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def tokens(batch=2, length=12, seed=1):
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


# 1. Partial RoPE


def reference_rotary(x, dims, base):
    """Rotary written out per pair: dim i and dim i + dims/2 rotate by angle t * base^(-2i/dims)."""
    out = x.clone()
    half = dims // 2
    for t in range(x.size(-2)):
        for i in range(half):
            angle = t * base ** (-2 * i / dims)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[..., t, i], x[..., t, i + half]
            out[..., t, i], out[..., t, i + half] = a * c + b * s, b * c - a * s
    return out


@pytest.mark.parametrize("dims", [4, 8])
def test_partial_rotary_rotates_the_first_dims_and_passes_the_rest(dims):
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    cos, sin = Rotary(dims, 10000.0)(7, torch.float64)
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., dims:], x[..., dims:])
    assert torch.allclose(y, reference_rotary(x, dims, 10000.0), atol=1e-5)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps each head's length


def test_rope_dims_equal_to_head_dim_is_todays_model():
    x = tokens()
    assert torch.equal(randomize(make()).logits(x), randomize(make(rope_dims=8)).logits(x))
    assert not torch.allclose(randomize(make()).logits(x), randomize(make(rope_dims=4)).logits(x))


# 2. LN scale


def capture_inputs(model):
    """Inputs of every attention and MLP call, in call order."""
    seen = {"attn": [], "mlp": []}
    for key, modules in (("attn", model.attns.values()), ("mlp", model.mlps)):
        for m in modules:
            m.register_forward_pre_hook(lambda mod, args, key=key: seen[key].append(args[0].detach().clone()))
    return seen


def test_ln_scale_divides_each_layers_normed_input_by_sqrt_of_its_depth_plus_one():
    # At init every output projection is zero, so the stream stays x0 and each layer's plain input is rms_norm(x0).
    order = {"unique_blocks": 3, "virtual_layers": [0, 1, 2, 1], "unet_skips": False}
    plain, scaled = make(**order), make(**order, ln_scale=True)
    x = tokens()
    a, b = capture_inputs(plain), capture_inputs(scaled)
    plain.logits(x), scaled.logits(x)
    for kind in ("attn", "mlp"):
        assert len(a[kind]) == len(b[kind]) == 4
        for depth, (p, s) in enumerate(zip(a[kind], b[kind])):
            assert torch.allclose(s, p / math.sqrt(depth + 1), rtol=1e-6, atol=0), (kind, depth)


def test_ln_scale_in_one_layer_with_random_weights():
    cfg = cfg_of(activation="leaky_relu2")
    attn, mlp, s = randomize(Attention(cfg, sdpa_attention)), randomize(MLP(cfg)), randomize(LayerScalars(cfg, 0))
    x, x0 = torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    seen = capture_inputs_of(attn)
    args = (x, x0, None, None, None, None, None, attn, mlp, s)
    virtual_layer(*args, None, False, torch.float32)
    virtual_layer(*args, torch.tensor(1 / math.sqrt(5)), False, torch.float32)
    assert torch.allclose(seen[1], seen[0] / math.sqrt(5), rtol=1e-6, atol=0)


def capture_inputs_of(module):
    seen = []
    module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


# 3. XSA


def test_xsa_removes_each_heads_component_along_its_own_value():
    torch.manual_seed(0)
    y, v = torch.randn(2, 4, 5, 8, dtype=torch.float64), torch.randn(2, 2, 5, 8, dtype=torch.float64)
    out = exclude_own_value(y, v)
    for h in range(4):
        vh = v[:, h // 2]  # GQA: query heads 0,1 read value head 0; heads 2,3 value head 1
        unit = vh / vh.norm(dim=-1, keepdim=True)
        direct = y[:, h] - (y[:, h] * unit).sum(-1, keepdim=True) * unit
        assert torch.allclose(out[:, h], direct)
        assert (out[:, h] * vh).sum(-1).abs().max() < 1e-12  # orthogonal to its own value
        assert (out[:, h] * v[:, 1 - h // 2]).sum(-1).abs().min() > 0  # not to the other group's


def test_attention_with_xsa_is_attention_minus_the_own_value_part():
    cfg = cfg_of()
    attn = randomize(Attention(cfg, sdpa_attention), std=0.3)
    outputs = capture_inputs_of(attn.proj)
    x = torch.randn(2, 6, 32)
    attn(x, torch.ones(4)), attn(x, torch.ones(4), xsa=True)
    plain, xsa = (o.view(2, 6, 4, 8).transpose(1, 2) for o in outputs)
    v = attn.c_v(x).view(2, 6, 2, 8).transpose(1, 2)
    assert torch.allclose(xsa, exclude_own_value(plain, v), atol=1e-6)
    assert not torch.allclose(xsa, plain, atol=1e-3)


def test_xsa_runs_on_the_last_layers_of_the_configured_schedule():
    model = make(unique_blocks=3, virtual_layers=[0, 1, 2, 1, 2], xsa_last=2)
    assert [s.xsa for s in model.steps] == [False, False, False, True, True]


# 4. Hashed bigram embedding


def test_bigram_hash_spreads_pairs_over_the_buckets():
    vocab, buckets = 1024, 2816
    prev, cur = torch.meshgrid(torch.arange(vocab), torch.arange(vocab), indexing="ij")
    ids = torch.stack((prev.flatten(), cur.flatten()), dim=1)  # every pair once, as sequences of two tokens
    b = bigram_bucket(ids, vocab, buckets)[:, 1]
    counts = torch.bincount(b, minlength=buckets).double()
    assert counts[0] == 0 and b.min() >= 1 and b.max() < buckets
    mean = vocab * vocab / (buckets - 1)
    assert counts[1:].min() > 0.8 * mean and counts[1:].max() < 1.2 * mean  # Poisson: ~ +-5 std
    chi2 = ((counts[1:] - mean) ** 2 / mean).sum() / (buckets - 2)
    assert 0.8 < chi2 < 1.2  # as spread as random assignment
    # Order matters and neighbours do not collide: (a, b) vs (b, a), and (a, b) vs (a, b + 1).
    assert (b.view(vocab, vocab) != b.view(vocab, vocab).T).float().mean() > 0.99
    assert (b.view(vocab, vocab)[:, 1:] != b.view(vocab, vocab)[:, :-1]).float().mean() > 0.99


def test_equal_pairs_share_a_bucket_and_position_zero_takes_the_reserved_one():
    ids = torch.tensor([[5, 9, 5, 9, 3], [9, 5, 9, 7, 7]])
    b = bigram_bucket(ids, 64, 31)
    assert (b[:, 0] == 0).all() and (b[:, 1:] >= 1).all()
    assert b[0, 1] == b[0, 3] == b[1, 3 - 1]  # (5, 9) at three places
    assert b[0, 2] == b[1, 1]  # (9, 5)
    assert b[0, 1] != b[0, 2]


def test_bigram_embedding_adds_exactly_zero_at_init_and_the_hashed_row_once_trained():
    x = tokens()
    plain, with_bigram = make(), make(bigram_buckets=31, bigram_dim=12)
    with_bigram.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(plain.embed(x), with_bigram.embed(x))
    with torch.no_grad():
        with_bigram.bigram.table.weight.normal_()
    bg = with_bigram.bigram
    expected = plain.tok_emb(x) + F.linear(bg.table.weight[bigram_bucket(x, 64, 31)], bg.proj.weight) * bg.scale
    assert torch.allclose(with_bigram.embed(x), rms_norm(expected), atol=1e-6)


# 5. Value embeddings


def test_value_embedding_adds_projected_embedding_times_scale_at_listed_depths_only():
    model = randomize(make(unique_blocks=2, virtual_layers=[0, 1, 0, 1], value_embed_dim=6, value_embed_layers=[1, 2]))
    values, inputs = [], []
    for attn in model.attns.values():
        inner = attn.attend
        attn.attend = lambda q, k, v, inner=inner: (values.append(v), inner(q, k, v))[1]
        attn.c_v.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    x = tokens()
    with torch.no_grad():
        model.logits(x)
        ve = model.value_embed
        added = F.linear(ve.table.weight[x], ve.proj.weight)  # (B, T, kv width)
        for depth, (v, h) in enumerate(zip(values, inputs)):
            block = model.steps[depth].block
            plain = model.attns[str(block)].c_v(h)
            extra = {1: added * ve.scales[0], 2: added * ve.scales[1]}.get(depth, 0)
            assert torch.equal(v, (plain + extra).view(2, 12, 2, 8).transpose(1, 2)), depth


# 6. Attention off


def test_attention_off_blocks_store_no_attention_and_run_the_mlp_only():
    on = from_dict({"model": {**BASE, "unique_blocks": 3}})
    off = from_dict({"model": {**BASE, "unique_blocks": 3, "attention_off_blocks": [0]}})
    dropped = {s.name: s for s in artifact.layout_for(on)}.keys() - {s.name for s in artifact.layout_for(off)}
    assert dropped == {"attns.0.c_q.weight", "attns.0.c_k.weight", "attns.0.c_v.weight", "attns.0.proj.weight",
                       "layers.0.attn_scale", "layers.0.q_gain"}
    d, kv = 32, 16
    dropped_bytes = 2 * (2 * d * d + 2 * kv * d + d + 4)  # float16 at this size (and their header entries)
    assert artifact.payload_bytes(on) - artifact.payload_bytes(off) > dropped_bytes
    model = make(unique_blocks=3, attention_off_blocks=[0])
    assert sorted(model.attns) == ["1", "2"] and [s.attention for s in model.steps] == [False, True, True]
    assert {n for n, _ in model.named_parameters()} == {s.name for s in artifact.layout_for(off)}
    # The layer is x <- mix(x, x0); x + mlp_scale * MLP(norm(x)).
    randomize(model)
    x, x0 = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    s, mlp = model.layers[0], model.mlps[0]
    out = virtual_layer(x, x0, None, None, None, None, None, None, mlp, s, None, False, torch.float32)
    mixed = s.resid_mix[0] * x + s.resid_mix[1] * x0
    assert torch.allclose(out, mixed + s.mlp_scale * mlp(rms_norm(mixed)), atol=1e-6)


# 7. Parallel residual lanes


def lane_parts(attention=True):
    cfg = cfg_of(unique_blocks=1, parallel_from_block=0, attention_off_blocks=[] if attention else [0])
    attn = randomize(Attention(cfg, sdpa_attention), seed=1) if attention else None
    mlp, s = randomize(MLP(cfg), seed=2), randomize(LayerScalars(cfg, 0), seed=3)
    return attn, mlp, s


def test_parallel_lanes_routed_apart_are_attention_on_lane_0_and_mlp_on_lane_1():
    attn, mlp, s = lane_parts()
    with torch.no_grad():
        s.lane_post.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # attention -> lane 0 only, MLP -> lane 1 only
        s.lane_resid.fill_(1.0)
    lane0, lane1, x0 = torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    out0, out1 = parallel_layer(lane0, lane1, x0, None, None, None, None, None, None, attn, mlp, s, None, False,
                                torch.float32)
    mix = s.resid_mix
    want0 = lane0 + s.attn_scale * attn(rms_norm(mix[0] * lane0 + mix[1] * x0), s.q_gain)
    want1 = lane1 + s.mlp_scale * mlp(rms_norm(mix[0] * lane1 + mix[1] * x0))
    assert torch.allclose(out0, want0, atol=1e-6) and torch.allclose(out1, want1, atol=1e-6)


def test_parallel_lanes_general_weights_by_hand():
    attn, mlp, s = lane_parts()
    lane0, lane1, x0 = torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    out0, out1 = parallel_layer(lane0, lane1, x0, None, None, None, None, None, None, attn, mlp, s, None, False,
                                torch.float32)
    mix, post, r = s.resid_mix, s.lane_post, s.lane_resid
    a = s.attn_scale * attn(rms_norm(mix[0] * lane0 + mix[1] * x0), s.q_gain)
    mid0, mid1 = r[0] * lane0 + post[0, 0] * a, r[0] * lane1 + post[0, 1] * a
    m = s.mlp_scale * mlp(rms_norm(mix[0] * mid1 + mix[1] * x0))  # the MLP reads lane 1 after attention wrote it
    assert torch.allclose(out0, r[1] * mid0 + post[1, 0] * m, atol=1e-5)
    assert torch.allclose(out1, r[1] * mid1 + post[1, 1] * m, atol=1e-5)
    attn, mlp, s = lane_parts(attention=False)  # no attention: one sublayer, the MLP
    assert s.lane_post.shape == (1, 2) and s.lane_resid.shape == (1,)
    out0, out1 = parallel_layer(lane0, lane1, x0, None, None, None, None, None, None, None, mlp, s, None, False,
                                torch.float32)
    m = s.mlp_scale * mlp(rms_norm(s.resid_mix[0] * lane1 + s.resid_mix[1] * x0))
    assert torch.allclose(out0, s.lane_resid[0] * lane0 + s.lane_post[0, 0] * m, atol=1e-5)
    assert torch.allclose(out1, s.lane_resid[0] * lane1 + s.lane_post[0, 1] * m, atol=1e-5)


def test_parallel_lanes_init_and_model_wiring():
    # Blocks 0,1 single, 2 and 3 parallel; a U-Net skip from depth 0 (single) enters both lanes at depth 2, the
    # one from depth 1 at depth 3; the final state is the lanes' mean.
    model = randomize(make(unique_blocks=4, parallel_from_block=2, skip_gates=True))
    fresh = make(unique_blocks=4, parallel_from_block=2)
    assert torch.equal(fresh.layers[2].lane_post, torch.ones(2, 2))
    assert torch.allclose(fresh.layers[2].lane_resid, torch.full((2,), 1.1**0.5))
    assert not hasattr(fresh.layers[1], "lane_post")
    x = tokens()
    x0 = model.embed(x)
    f32 = torch.float32
    L, A, M, sw, sg = model.layers, model.attns, model.mlps, model.skip_weights, model.skip_gates
    h0 = virtual_layer(x0, x0, None, None, None, None, None, A["0"], M[0], L[0], None, False, f32)
    h1 = virtual_layer(h0, x0, None, None, None, None, None, A["1"], M[1], L[1], None, False, f32)
    lanes = parallel_layer(h1, h1, x0, h1, h1, sw[0], sg[0], None, None, A["2"], M[2], L[2], None, False, f32)
    lanes = parallel_layer(*lanes, x0, h0, h0, sw[1], sg[1], None, None, A["3"], M[3], L[3], None, False, f32)
    assert torch.allclose(model.hidden(x), rms_norm((lanes[0] + lanes[1]) / 2), atol=1e-6)


def test_lanes_started_in_the_encoder_send_both_lanes_as_the_skip():
    model = randomize(make(unique_blocks=2, virtual_layers=[0, 1, 0, 1], parallel_from_block=0))
    x = tokens()
    x0 = model.embed(x)
    L, A, M, sw = model.layers, model.attns, model.mlps, model.skip_weights
    f32 = torch.float32
    a = parallel_layer(x0, x0, x0, None, None, None, None, None, None, A["0"], M[0], L[0], None, False, f32)
    b = parallel_layer(*a, x0, None, None, None, None, None, None, A["1"], M[1], L[1], None, False, f32)
    c = parallel_layer(*b, x0, *b, sw[0], None, None, None, A["0"], M[0], L[2], None, False, f32)
    d = parallel_layer(*c, x0, *a, sw[1], None, None, None, A["1"], M[1], L[3], None, False, f32)
    assert torch.allclose(model.hidden(x), rms_norm((d[0] + d[1]) / 2), atol=1e-6)


def test_lanes_that_would_merge_back_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"model.parallel_from_block: the two lanes cannot merge back: positions \[3\]"):
        cfg_of(unique_blocks=3, virtual_layers=[0, 1, 2, 1], parallel_from_block=2)


# 8. Gated skips


def test_gated_skip_is_the_lerp_of_weighted_skip_and_stream():
    x, skip, w, g = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(8), torch.randn(8)
    gate = torch.sigmoid(g)
    assert torch.allclose(join_skip(x, skip, w, g), gate * x + (1 - gate) * w * skip, atol=1e-6)
    assert torch.allclose(join_skip(x, skip, w, torch.zeros(8)), (x + w * skip) / 2, atol=1e-6)  # at init
    assert torch.equal(join_skip(x, skip, w, None), x + w * skip)  # ungated, as before
    model = make(unique_blocks=4, skip_gates=True)
    assert torch.equal(model.skip_gates, torch.zeros(2, 32))
    with pytest.raises(ConfigError, match="model.skip_gates: .*unet_skips: true"):
        cfg_of(skip_gates=True, unet_skips=False)


# 9. Smear gate


def test_smear_mixes_in_the_previous_token_by_a_per_channel_gate():
    x, g = torch.randn(2, 5, 8), torch.randn(8)
    s = torch.sigmoid(g)
    out = smear(x, g)
    assert torch.allclose(out[:, 0], (1 - s) * x[:, 0], atol=1e-6)  # no previous token: it counts as zero
    assert torch.allclose(out[:, 1:], (1 - s) * x[:, 1:] + s * x[:, :-1], atol=1e-6)


def test_smear_keeps_the_model_causal():
    model = randomize(make(smear=True, bigram_buckets=31, bigram_dim=12))
    x = tokens(1, 12)
    for t in range(11):
        y = x.clone()
        y[0, t + 1] = (y[0, t + 1] + 5) % 64
        a, b = model.logits(x), model.logits(y)
        assert torch.allclose(a[0, : t + 1], b[0, : t + 1], atol=1e-6), t
        assert not torch.allclose(a[0, t + 1], b[0, t + 1])


# 10. Orthogonal init


def test_orthogonal_init_gives_orthonormal_rows_or_columns_and_zero_output_projections():
    model = make(**{**ALL_ON, "model_dim": 64, "num_heads": 4, "num_kv_heads": 2})
    names = ["attns.1.c_q.weight", "attns.1.c_k.weight", "attns.2.c_v.weight", "mlps.0.fc.weight", "mlps.5.fc.weight",
             "bigram.proj.weight", "value_embed.proj.weight"]
    for name in names:
        w = model.get_parameter(name).detach().double()
        rows, cols = w.shape
        gram = w @ w.T if rows <= cols else w.T @ w
        assert torch.allclose(gram, torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-5), name
        assert abs(w.std().item() * math.sqrt(max(rows, cols)) - 1) < 0.05, name
    for name in ("attns.1.proj.weight", "mlps.0.proj.weight", "mlps.5.proj.weight"):
        assert not model.get_parameter(name).any()


# Every technique together: artifact, optimizer groups, compile.


def test_every_technique_together_survives_the_artifact_round_trip():
    cfg = from_dict({"model": {**BASE, **ALL_ON}, "export": {"quant_bits": 8, "keep_float_max_numel": 256}})
    model = randomize(GPT(cfg.model), std=0.05)
    payload = artifact.pack(model.state_dict(), cfg)
    assert len(payload) == artifact.payload_bytes(cfg)
    loaded_cfg, state = artifact.unpack(payload)
    assert loaded_cfg.model == cfg.model
    rebuilt = GPT(loaded_cfg.model)
    rebuilt.load_state_dict(state)  # strict: the layout is the state_dict
    quantized = {e["name"] for e in artifact._tensor_table(cfg) if e["kind"] == "q"}
    assert {"bigram.table.weight", "value_embed.table.weight", "tok_emb.weight"} <= quantized
    x = tokens()
    assert (rebuilt.logits(x) - model.logits(x)).abs().max() < 0.05


def test_artifact_headers_store_technique_fields_only_where_set():
    from trainer.model_config import TECHNIQUE_FIELDS

    plain, smeared = from_dict({"model": BASE}), from_dict({"model": {**BASE, "smear": True}})
    assert not set(TECHNIQUE_FIELDS) & set(artifact.stored_config(plain)["model"])  # headers as before the fields
    assert set(TECHNIQUE_FIELDS) & set(artifact.stored_config(smeared)["model"]) == {"smear"}
    cfg, _ = artifact.unpack(artifact.pack(GPT(smeared.model).state_dict(), smeared))
    assert cfg.model == smeared.model


def test_every_parameter_is_in_exactly_one_optimizer_group():
    from trainer.optim import build_optimizers
    from trainer.run_config import TrainConfig

    model = make(**ALL_ON)
    embed, muon, scalar = build_optimizers(model, TrainConfig())
    groups = [[p for g in opt.param_groups for p in g["params"]] for opt in (embed, muon, scalar)]
    ids = [id(p) for group in groups for p in group]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[0]} == {"tok_emb.weight", "bigram.table.weight", "value_embed.table.weight"}
    assert all(names[id(p)].startswith(("attns.", "mlps.")) and p.ndim == 2 for p in groups[1])
    assert len(groups[1]) == 4 * 4 + 2 * 7  # four blocks with attention; five block MLPs and two untied
    assert {"bigram.proj.weight", "value_embed.proj.weight", "bigram.scale", "value_embed.scales", "smear_gate",
            "skip_gates", "layers.5.lane_post", "layers.6.lane_resid"} <= {names[id(p)] for p in groups[2]}


def test_regional_compilation_takes_every_technique_and_computes_the_eager_result():
    import torch._dynamo
    from torch._dynamo.utils import counters

    eager = randomize(make(**ALL_ON), std=0.1)
    regional = make(**ALL_ON)
    regional.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    counters.clear()
    regional.compile_layers(backend="eager")
    x = tokens()
    eager(x, x).backward()
    regional(x, x).backward()
    for (name, a), b in zip(eager.named_parameters(), regional.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    for active in (False, True):  # both schedules of delayed recurrence
        eager.set_recurrence(active), regional.set_recurrence(active)
        assert torch.allclose(regional(x, x), eager(x, x), atol=1e-6)
    torch._dynamo.reset()


def test_regional_compilation_of_the_record_shape_compiles_variants_not_layers():
    import torch._dynamo
    from torch._dynamo.utils import counters

    record = {**ALL_ON, "unique_blocks": 11, "virtual_layers": [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10],
              "untie_mlp": [6, 7], "xsa_last": 11, "value_embed_layers": [9, 10], "parallel_from_block": 7}
    model = make(**record)
    torch._dynamo.reset()
    counters.clear()
    model.compile_layers(backend="eager")
    x = tokens()
    model(x, x).backward()
    # 13 layers, 10 graphs. Single stream: attention off (x is x0), without XSA, with XSA, the skip that is x
    # itself, a skip. Lanes (blocks 7-10): starting (both are x) with a skip and the value embedding, a skip and
    # the value embedding, a skip, neither. The loss head.
    assert counters["stats"]["unique_graphs"] == 10
    # Recurrence off (11 layers) adds two lane variants: starting with a skip only, the value embedding only;
    # at most 6 graphs of one function, under dynamo's recompile limit (8) past which it runs eagerly.
    model.set_recurrence(False)
    model(x, x).backward()
    assert counters["stats"]["unique_graphs"] == 12
    torch._dynamo.reset()


def test_whole_model_traces_as_one_graph_with_every_technique():
    import torch._dynamo

    model = make(**ALL_ON)
    x = tokens()
    for active in (True, False):
        model.set_recurrence(active)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x, x)
        assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


def test_technique_fields_reject_bad_values_naming_key_and_fix():
    cases = [
        ({"rope_dims": 5}, r"model.rope_dims: 5 must be an even number of dims in 0..head_dim=8"),
        ({"xsa_last": 3}, r"model.xsa_last: must be 0 \(off\) to 2"),
        ({"bigram_buckets": 1}, r"model.bigram_buckets: needs at least 2 buckets"),
        ({"value_embed_layers": [1]}, r"model.value_embed_dim: 0 with value_embed_layers \[1\]"),
        ({"value_embed_dim": 8}, r"model.value_embed_dim: 8 with value_embed_layers \[\]: set both .* or neither"),
        ({"value_embed_dim": 8, "value_embed_layers": [2]}, r"model.value_embed_layers: \[2\] must be distinct depths in 0..1"),
        ({"attention_off_blocks": [2]}, r"model.attention_off_blocks: \[2\] must be distinct blocks in 0..1"),
        ({"parallel_from_block": 2}, r"model.parallel_from_block: 2 must be -1 \(off\) or a block in 0..1"),
        ({"weight_init": "xavier"}, r"model.weight_init: must be one of .*orthogonal"),
    ]
    for fields, message in cases:
        with pytest.raises(ConfigError, match=message):
            cfg_of(**fields)
