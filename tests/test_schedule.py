from pathlib import Path

import pytest

from trainer import run_config as config
from trainer.model import GPT
from trainer.run_config import load
from trainer.schedule import active_schedule, build_schedule, repeat_positions, tensor_layout, unique_params


def cfg_of(**model):
    return config.from_dict({"model": model}).model


def test_plain_stack_runs_each_block_once():
    layers = build_schedule(cfg_of())
    assert [(l.block, l.mlp) for l in layers] == [(i, i) for i in range(9)]


def test_loop_middle_reuses_blocks_and_their_mlps():
    order = [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]
    layers = build_schedule(cfg_of(unique_blocks=11, virtual_layers=order))
    assert [l.block for l in layers] == order
    assert [l.mlp for l in layers] == order


def test_untie_full_gives_every_repeat_its_own_mlp_and_shares_attention():
    order = [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8]
    layers = build_schedule(cfg_of(unique_blocks=9, virtual_layers=order, untie_mlp="full"))
    assert [l.block for l in layers] == order
    assert sorted(l.mlp for l in layers) == list(range(len(order)))  # all distinct, none unused
    assert layers[4].mlp == 4 and layers[6].mlp >= 9  # first occurrence keeps the block's MLP


def test_untie_list_only_unties_named_positions():
    layers = build_schedule(cfg_of(unique_blocks=2, virtual_layers=[0, 1, 0, 1], untie_mlp=[3]))
    assert [l.mlp for l in layers] == [0, 1, 0, 2]


@pytest.mark.parametrize(
    "model",
    [
        {},
        {"unique_blocks": 3, "virtual_layers": [0, 1, 2] * 3, "depth_signal": "learned"},
        {"unique_blocks": 2, "virtual_layers": [0, 1, 0, 1, 0], "untie_mlp": "full", "depth_signal": "sinusoidal"},
        {"unique_blocks": 3, "virtual_layers": [0, 1, 1, 1, 2], "unet_skips": False},
        {"unique_blocks": 5, "virtual_layers": [0, 1, 2, 1, 2, 3, 4], "untie_mlp": [3, 4], "rope_dims": 8,
         "ln_scale": True, "xsa_last": 5, "bigram_buckets": 31, "bigram_dim": 12, "value_embed_dim": 8,
         "value_embed_layers": [4, 5], "attention_off_blocks": [0, 3], "parallel_from_block": 3, "skip_gates": True,
         "smear": True, "weight_init": "orthogonal", "depth_signal": "learned"},
    ],
)
def test_layout_matches_the_real_model_exactly(model):
    small = {"model_dim": 64, "num_heads": 4, "num_kv_heads": 2, "vocab_size": 100, **model}
    cfg = cfg_of(**small)
    state = GPT(cfg).state_dict()
    layout = {s.name: s.shape for s in tensor_layout(cfg)}
    assert layout == {k: tuple(v.shape) for k, v in state.items()}
    assert unique_params(cfg) == sum(p.numel() for p in GPT(cfg).parameters())


def test_repeating_blocks_adds_only_per_layer_scalars():
    once = cfg_of(unique_blocks=3)
    thrice = cfg_of(unique_blocks=3, virtual_layers=[0, 1, 2] * 3)
    extra = unique_params(thrice) - unique_params(once)
    d, heads = once.model_dim, once.num_heads
    per_layer = 4 * d + heads  # attn_scale, mlp_scale, resid_mix (2d), q_gain
    skips = (9 // 2 - 3 // 2) * d
    assert extra == 6 * per_layer + skips


def test_the_record_preset_runs_as_the_record_counts_its_layers():
    preset = Path(__file__).resolve().parents[1] / "spaces" / "presets" / "record_0331_mini_recurrence.yaml"
    cfg = load(preset).model
    assert repeat_positions(cfg) == {6, 7}
    on, off = active_schedule(cfg, True), active_schedule(cfg, False)
    assert [s.block for s in on] == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]
    assert [s.mlp for s in on] == [0, 1, 2, 3, 4, 5, 11, 12, 6, 7, 8, 9, 10]
    assert [s.position for s in off] == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12] and [s.depth for s in off] == list(range(11))
    for steps, encoder in ((on, 6), (off, 5)):
        assert [s.skip_out for s in steps] == [d < encoder for d in range(len(steps))]
        assert [s.skip_in for s in steps] == [d - encoder if encoder <= d < 2 * encoder else -1 for d in range(len(steps))]
        assert [s.attention for s in steps] == [s.block != 0 for s in steps]
        assert [s.xsa for s in steps] == [s.depth >= 2 for s in steps]  # the last 11 of 13 configured layers
        assert [s.value_embed for s in steps][9:11] == [0, 1] and {s.value_embed for s in steps[:9]} == {-1}
        assert [s.parallel for s in steps] == [s.block >= 7 for s in steps]
    assert [s.parallel for s in on].index(True) == 9  # blocks 7..10 run at depths 9..12 with recurrence on


def test_layout_lists_each_technique_tensor_with_its_shape_and_role():
    cfg = cfg_of(bigram_buckets=2816, bigram_dim=112, value_embed_dim=128, value_embed_layers=[1, 2], smear=True,
                 skip_gates=True, parallel_from_block=8, attention_off_blocks=[0])
    layout = {s.name: s for s in tensor_layout(cfg)}
    roles = {name: (s.shape, s.role, s.starts_at_zero) for name, s in layout.items()
             if name.startswith(("bigram", "value_embed", "smear", "skip_gates", "layers.8.lane"))}
    assert roles == {
        "bigram.table.weight": ((2816, 112), "embedding", True),
        "bigram.proj.weight": ((512, 112), "matrix", False),
        "bigram.scale": ((1,), "scalar", False),
        "value_embed.table.weight": ((1024, 128), "embedding", False),
        "value_embed.proj.weight": ((256, 128), "matrix", False),
        "value_embed.scales": ((2,), "scalar", False),
        "smear_gate": ((512,), "scalar", False),
        "skip_gates": ((4, 512), "scalar", False),
        "layers.8.lane_post": ((2, 2), "scalar", False),
        "layers.8.lane_resid": ((2,), "scalar", False),
    }
    assert not any(name.startswith("attns.0.") for name in layout)
    plain = cfg_of()
    added = 2816 * 112 + 512 * 112 + 1 + 1024 * 128 + 256 * 128 + 2 + 512 + 4 * 512 + 6
    dropped = 2 * 512 * 512 + 2 * 256 * 512 + 512 + 8  # block 0's attention, its layer's attn_scale and q_gain
    assert unique_params(cfg) - unique_params(plain) == added - dropped
