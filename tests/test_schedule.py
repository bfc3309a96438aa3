import pytest
import torch

from trainer import run_config as config
from trainer.model import GPT
from trainer.schedule import build_schedule, tensor_layout, unique_params


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
