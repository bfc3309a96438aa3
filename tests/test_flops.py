import pytest

from trainer.model_config import ModelConfig
from trainer.flops import flops_per_token, matmul_params_per_token, mfu


def test_baseline_shape_counts_every_block_matrix_and_the_output_projection():
    cfg = ModelConfig()  # 9 x 512, 8 heads, 4 KV heads, MLP x2, vocab 1024
    per_layer = 512 * 512 * 2 + 2 * 256 * 512 + 2 * 1024 * 512
    assert matmul_params_per_token(cfg) == 9 * per_layer + 1024 * 512
    assert flops_per_token(cfg, 1024) == 6 * (9 * per_layer + 1024 * 512) + 6 * 512 * 1024 * 9


def test_repeated_blocks_cost_flops_per_run_not_per_stored_weight():
    once = ModelConfig(unique_blocks=11)
    looped = ModelConfig(unique_blocks=11, virtual_layers=(0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10))
    per_layer = (flops_per_token(looped, 1024) - flops_per_token(once, 1024)) / 2
    assert per_layer == 6 * (2 * 512 * 512 + 2 * 256 * 512 + 2 * 1024 * 512) + 6 * 512 * 1024


def test_mfu_scales_with_throughput_and_gpu_count():
    cfg = ModelConfig()
    one = mfu(cfg, 1024, 1.5e6)
    assert one == pytest.approx(flops_per_token(cfg, 1024) * 1.5e6 / 989e12)
    assert mfu(cfg, 1024, 3.0e6, world_size=2) == pytest.approx(one)
