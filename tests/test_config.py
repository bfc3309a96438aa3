import pytest

from trainer import run_config as config
from trainer.model_config import ConfigError


def test_defaults_are_the_challenge_baseline():
    cfg = config.load()
    assert (cfg.model.unique_blocks, cfg.model.model_dim, cfg.model.num_heads, cfg.model.num_kv_heads) == (9, 512, 8, 4)
    assert cfg.model.schedule_order == tuple(range(9))
    assert cfg.train.batch_tokens == 524_288 and cfg.export.limit_bytes == 16_000_000


def test_yaml_and_toml_load_the_same_config(tmp_path):
    yml = tmp_path / "a.yaml"
    yml.write_text("model:\n  unique_blocks: 3\n  virtual_layers: [0, 1, 2, 0, 1, 2]\n  untie_mlp: full\ntrain:\n  budget_s: 60\n")
    tml = tmp_path / "a.toml"
    tml.write_text('[model]\nunique_blocks = 3\nvirtual_layers = [0, 1, 2, 0, 1, 2]\nuntie_mlp = "full"\n[train]\nbudget_s = 60\n')
    a, b = config.load(yml), config.load(tml)
    assert a == b
    assert a.model.virtual_layers == (0, 1, 2, 0, 1, 2) and a.train.budget_s == 60.0


def test_overrides_and_round_trip():
    cfg = config.load(None, ["model.unique_blocks=2", "model.virtual_layers=[0,1,0,1]", "model.untie_mlp=[2]"])
    assert cfg.model.untie_mlp == (2,)
    assert config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model.unique_blocks=2", "model.virtual_layers=[0,1,2]"], "refers to blocks [2]"),
        (["model.unique_blocks=3", "model.virtual_layers=[0,1]"], "never runs blocks [2]"),
        (["model.model_dim=500"], "not divisible by num_heads"),
        (["model.num_kv_heads=3"], "multiple of num_kv_heads"),
        (["model.untie_mlp=sometimes"], "untie_mlp"),
        (["model.untie_mlp=[40]"], "outside 0..8"),
        (["train.micro_batch_tokens=1000"], "multiple of seq_len"),
        (["export.quant_bits=7"], "quant_bits"),
        (["export.embedding_bits=7"], "export.embedding_bits: must be 5, 6, 8, 16"),
        (["train.attention=fa9"], "train.attention: 'fa9' is not one of"),
        (["train.residual_dtype=float16"], "must be float32 or bfloat16"),
        (["train.compile_scope=blocks"], "train.compile_scope: 'blocks' is not one of"),
        (["model.unique_blocks=many"], "expected an integer"),
    ],
)
def test_invalid_values_name_the_key_and_problem(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        config.load(None, overrides)


def test_unknown_key_names_file_key_and_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  unique_block: 3\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    msg = str(err.value)
    assert str(path) in msg and "unique_block" in msg and "unique_blocks" in msg


def test_missing_file_and_bad_override_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(None, ["unique_blocks"])


def test_smoke_version_keeps_the_model_and_shrinks_training():
    cfg = config.load(None, ["model.model_dim=832", "model.num_heads=13", "model.num_kv_heads=1"])
    smoke = config.smoke_version(cfg)
    assert smoke.model == cfg.model
    assert smoke.train.batch_tokens <= 256 and not smoke.train.compile and smoke.train.final_val_tokens > 0


@pytest.mark.parametrize(
    "world, expected",
    [(1, (131_072, 4)), (2, (131_072, 2)), (4, (131_072, 1)), (8, (65_536, 1))],
)
def test_batch_splits_over_ranks_with_micro_batch_as_an_upper_bound(world, expected):
    train = config.load(None, []).train  # 524,288 tokens per step, micro-batches of at most 131,072
    assert train.split_batch(world) == expected


def test_batch_that_cannot_split_over_ranks_is_a_clear_error():
    train = config.load(None, ["train.batch_tokens=3072", "train.micro_batch_tokens=1024"]).train
    with pytest.raises(ConfigError, match="does not split into 2 ranks"):
        train.split_batch(2)  # 1,536 tokens per rank is not a whole number of 1,024-token sequences


def test_configs_recorded_with_the_report_keys_read_without_them(tmp_path):
    """Runs, reruns and searches recorded train.report_at_s, report_every_s, rung_roundtrip and
    rung_cooldown_fraction before those became the search's settings: such configs read as the same training."""
    recorded = config.RunConfig().to_dict()
    recorded["train"].update(report_at_s=[20.0, 60.0], report_every_s=30.0, rung_roundtrip=True,
                             rung_cooldown_fraction=0.1, matrix_lr=0.03)
    cfg = config.from_dict(recorded)
    assert cfg == config.load(None, ["train.matrix_lr=0.03"])
    assert set(config.RETIRED_TRAIN_KEYS) == {"report_at_s", "report_every_s", "rung_roundtrip",
                                              "rung_cooldown_fraction"}
    assert not set(config.RETIRED_TRAIN_KEYS) & set(cfg.to_dict()["train"])
    path = tmp_path / "run_config.yaml"  # a rerun's saved config, as `trainer train --config` reads it
    path.write_text("train:\n  report_every_s: 0.0\n  report_at_s: []\n  rung_roundtrip: false\n  seed: 7\n")
    assert config.load(path).train.seed == 7
    with pytest.raises(ConfigError, match="unknown key"):  # any other unknown key is still refused
        config.from_dict({"train": {"report_at": [20.0]}})
