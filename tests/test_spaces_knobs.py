"""Knobs: any RunConfig key as a search axis, through the same walk as the fixed axes."""
import optuna
import pytest
import yaml

from spaces import patterns
from spaces.space import SpaceError, load_space

TINY = {"model_dim": 64, "num_heads": 2, "num_kv_heads": 1}
SMALL = {
    "base": {"model": {"vocab_size": 64}, "train": {"seq_len": 32, "micro_batch_tokens": 64, "batch_tokens": 128,
                                                    "val_prefix_tokens": 32}},
    "unique_blocks": [2, 3],
    "patterns": {"none": {}, "cycle": {"unique_blocks": [2], "repeats": [2, 3]}},
    "width": [TINY],
    "quant_bits": [6],
}
# Orders of SMALL: (0, 1), (0, 1, 2), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1).
DEPTHS = (2, 3, 4, 6)


def write(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def space_with(tmp_path, knobs, **changes):
    return load_space(write(tmp_path, {**SMALL, **changes, "knobs": knobs}))


def test_knobs_multiply_the_points_and_set_their_keys(tmp_path):
    knobs = {"model.xsa_last": {"min": 0, "max": "depth"},       # an integer range bounded by each order's depth
             "train.matrix_lr": {"min": 0.02, "max": 0.04, "step": 0.01},
             "model.attention_off_blocks": [[], [0]],             # a list-valued key: a list of lists
             "model.smear": [False, True],
             "export.upgrade": [0, 4, "fill"]}
    space = space_with(tmp_path, knobs)
    points = list(space.configs())
    assert len(points) == sum(d + 1 for d in DEPTHS) * 3 * 2 * 2 * 3
    seen = set()
    for a, cfg in points:
        depth = len(cfg.model.schedule_order)
        assert 0 <= cfg.model.xsa_last <= depth and a["model.xsa_last"] == cfg.model.xsa_last
        assert cfg.train.matrix_lr in (0.02, 0.03, 0.04)
        assert cfg.model.attention_off_blocks == {"[]": (), "[0]": (0,)}[a["model.attention_off_blocks"]]
        assert cfg.export.upgrade == a["export.upgrade"]
        assert cfg.train.seq_len == 32  # base stays
        seen.add((depth, cfg.model.xsa_last, cfg.train.matrix_lr, cfg.model.attention_off_blocks, cfg.model.smear,
                  cfg.export.upgrade))
    assert len(seen) == len(points)
    assert {d for d, x, *_ in seen if x == d} == set(DEPTHS)


def test_a_knob_with_when_is_asked_only_when_its_condition_holds(tmp_path):
    knobs = {"model.bigram_buckets": [0, 64],
             "model.bigram_dim": {"choices": [8, 16], "when": {"model.bigram_buckets": [64]}}}
    space = space_with(tmp_path, knobs)
    points = list(space.configs())
    assert len(points) == len(DEPTHS) * (1 + 2)
    for a, cfg in points:
        assert ("model.bigram_dim" in a) == (cfg.model.bigram_buckets == 64)
        if cfg.model.bigram_buckets == 0:
            assert cfg.model.bigram_dim == 128  # the default, not asked
    with pytest.raises(SpaceError, match="does not use"):
        space.build({**points[0][0], "model.bigram_dim": 8} if points[0][1].model.bigram_buckets == 0
                    else {**points[0][0], "model.bigram_buckets": 0})


def test_order_dependent_choices_in_n_and_depth(tmp_path):
    # Two lanes from the last block: valid for these orders (a cycle would run lower blocks after it).
    space = space_with(tmp_path, {"model.xsa_last": [0, "depth - 1"], "model.parallel_from_block": [-1, "n - 1"]},
                       patterns={"none": {}, "explicit": [[0, 1, 1, 2, 2]]})
    for a, cfg in space.configs():
        order = cfg.model.schedule_order
        assert cfg.model.xsa_last in (0, len(order) - 1)
        assert cfg.model.parallel_from_block in (-1, cfg.model.unique_blocks - 1)
        assert a["model.xsa_last"] in (0, "depth - 1")
    assert {len(cfg.model.schedule_order) for _, cfg in space.configs()} == {2, 3, 5}


def test_suggest_asks_knobs_under_their_key_and_snaps_floats_to_the_grid(tmp_path):
    knobs = {"train.matrix_lr": {"min": 0.01, "max": 0.05, "step": 0.01}, "model.xsa_last": {"min": 0, "max": "depth"},
             "model.smear": [False, True]}
    space = space_with(tmp_path, knobs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    study.optimize(lambda t: configs.append(space.suggest(t)) or 0.0, n_trials=20)
    for trial, cfg in zip(study.trials, configs):
        assert {"train.matrix_lr", "model.xsa_last", "model.smear"} <= set(trial.params)
        assert cfg.train.matrix_lr in (0.01, 0.02, 0.03, 0.04, 0.05)
        assert space.build(trial.params) == cfg  # a trial's params rebuild its config
    assert len({c.train.matrix_lr for c in configs}) > 1


def test_assignment_for_matches_knob_keys_of_every_section(tmp_path):
    space = space_with(tmp_path, {"model.xsa_last": [0, "depth"], "train.matrix_lr": [0.02, 0.04],
                                  "export.upgrade": [0, "fill"]})
    for a, cfg in list(space.configs())[::5]:
        found = space.assignment_for(cfg)
        assert found is not None and space.build(found) == cfg
    a, cfg = next(space.configs())
    import dataclasses
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, matrix_lr=0.03))
    assert space.assignment_for(other) is None


def test_untie_choices_name_the_repeats_that_get_their_own_mlp(tmp_path):
    order = patterns.loop_middle(11, 4, 5, 3)  # 0..5, 4,5, 4,5, 6..10
    assert patterns.untie_value("repeats", order) == (6, 7, 8, 9)
    assert patterns.untie_value("first_repeat", order) == (6, 7)
    assert patterns.untie_value("full", order) == "full"
    space = load_space(write(tmp_path, {**SMALL, "untie_mlp": ["none", "repeats", "first_repeat"]}))
    built = {(cfg.model.schedule_order, a.get("untie_mlp")): cfg.model.untie_mlp for a, cfg in space.configs()}
    assert built[((0, 1, 0, 1, 0, 1), "repeats")] == (2, 3, 4, 5)
    assert built[((0, 1, 0, 1, 0, 1), "first_repeat")] == (2, 3)
    assert built[((0, 1, 0, 1), "none")] == "none"


def bad(knobs, **changes):
    return {**SMALL, **changes, "knobs": knobs}


@pytest.mark.parametrize(
    "data,key,problem",
    [
        (bad({"model.xsa_lats": [0, 1]}), "model.xsa_lats", "has no key"),
        (bad({"optim.lr": [0.1]}), "optim.lr", "unknown section"),
        (bad({"xsa_last": [0]}), "knobs.xsa_last", "not section.key"),
        (bad({"model.xsa_last": [0, "two"]}), "knobs.model.xsa_last", "uses"),
        (bad({"model.xsa_last": [0, 1.5]}), "knobs.model.xsa_last", "not a valid integer"),
        (bad({"model.smear": ["yes"]}), "knobs.model.smear", "not a valid true/false"),
        (bad({"train.matrix_lr": {"min": 0.01, "max": 0.05}}), "knobs.train.matrix_lr", "need a step|float range"),
        (bad({"train.matrix_lr": {"min": 0.01, "max": 0.05, "step": 0.03}}), "knobs.train.matrix_lr", "grid"),
        (bad({"model.smear": []}), "knobs.model.smear", "empty"),
        (bad({"model.smear": [True, True]}), "knobs.model.smear", "repeats"),
        (bad({"model.mlp_mult": [2, 3]}, mlp_mult=[2]), "knobs.model.mlp_mult", "axis"),
        (bad({"model.virtual_layers": [[0, 1, 1]]}), "knobs.model.virtual_layers", "axis"),
        (bad({"model.num_heads": [2]}), "knobs.model.num_heads", "axis"),
        (bad({"train.seq_len": [32, 64]}), "knobs.train.seq_len", "base.train"),
        (bad({"model.xsa_last": [0, 3]}), "knobs.model.xsa_last", "invalid with unique_blocks=2"),
        (bad({"model.parallel_from_block": [2]}), "knobs.model.parallel_from_block", "invalid with unique_blocks=2"),
        (bad({"model.bigram_dim": {"choices": [8], "when": {"model.bigram_dim": [8]}}}),
         "knobs.model.bigram_dim.when.model.bigram_dim", "decided later"),
    ],
)
def test_malformed_knobs_name_file_key_and_fix(tmp_path, data, key, problem):
    path = write(tmp_path, data, "broken.yaml")
    with pytest.raises(SpaceError, match=rf"broken\.yaml: {key}.*({problem}).*fix: "):
        load_space(path)


def test_every_existing_space_file_still_loads():
    from pathlib import Path

    for path in (Path(__file__).resolve().parents[1] / "spaces").glob("*.yaml"):
        assert load_space(path).size() > 0
