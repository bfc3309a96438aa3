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


def test_techniques_change_flops_by_what_they_multiply():
    looped = ModelConfig(unique_blocks=11, virtual_layers=(0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10))
    d, kv, attention_weights = 512, 256, 2 * 512 * 512 + 2 * 256 * 512
    no_attention = ModelConfig(unique_blocks=11, virtual_layers=looped.virtual_layers, attention_off_blocks=(4,))
    # Block 4 runs twice: both runs lose their attention matrices and their T x T scores.
    assert flops_per_token(looped, 1024) - flops_per_token(no_attention, 1024) == 2 * (6 * attention_weights + 6 * d * 1024)
    extras = ModelConfig(unique_blocks=11, virtual_layers=looped.virtual_layers, bigram_buckets=2816, bigram_dim=112,
                         value_embed_dim=128, value_embed_layers=(9, 10))
    # The projections run once per token whatever the depth; the tables are lookups.
    assert matmul_params_per_token(extras) - matmul_params_per_token(looped) == 112 * d + 128 * kv
    # Recurrence off: the schedule without the repeats of blocks 4 and 5 is the 11-layer stack.
    assert flops_per_token(looped, 1024, recurrence_on=False) == flops_per_token(ModelConfig(unique_blocks=11), 1024)
