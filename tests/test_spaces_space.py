"""Search spaces: loading, presets as points, enumeration, optuna suggestion, sampling, validation errors."""
from pathlib import Path

import optuna
import pytest
import yaml

from spaces import patterns
from spaces.space import SpaceError, load_space
from trainer.run_config import load

ROOT = Path(__file__).resolve().parents[1] / "spaces"
DEFAULT = ROOT / "default.yaml"

# The default-space assignment that reproduces each preset.
PRESET_POINTS = {
    "baseline": {"pattern": "none", "unique_blocks": 9, "width": "d512_h8_kv4", "mlp_mult": 2,
                       "depth_signal": "none", "quant_bits": 6, "embedding_bits": 0},
    "loop45_11x512": {"pattern": "loop_middle", "loop_middle.unique_blocks": 11, "loop_middle.start": 4,
                      "loop_middle.end": 5, "loop_middle.repeats": 2, "untie_mlp": "none", "width": "d512_h8_kv4",
                      "mlp_mult": 2, "depth_signal": "none", "quant_bits": 6, "embedding_bits": 0},
    "shared3x4_832": {"pattern": "cycle", "cycle.unique_blocks": 3, "cycle.repeats": 4, "untie_mlp": "none",
                      "width": "d832_h8_kv4", "mlp_mult": 2, "depth_signal": "learned", "quant_bits": 8,
                      "embedding_bits.q8": 0},
    "six_to_14_sinusoidal": {"pattern": "loop_middle", "loop_middle.unique_blocks": 6, "loop_middle.start": 1,
                             "loop_middle.end": 4, "loop_middle.repeats": 3, "untie_mlp": "none",
                             "width": "d512_h8_kv4", "mlp_mult": 2, "depth_signal": "sinusoidal", "quant_bits": 8,
                             "embedding_bits.q8": 0},
    "tie_tail_11to15": {"pattern": "tie_tail", "tie_tail.unique_blocks": 11, "tie_tail.repeats": 5,
                        "tie_tail.exit_blocks": 1, "untie_mlp": "none", "width": "d512_h8_kv4", "mlp_mult": 2,
                        "depth_signal": "none", "quant_bits": 6, "embedding_bits": 0},
    "cycle3x3_512": {"pattern": "cycle", "cycle.unique_blocks": 3, "cycle.repeats": 3, "untie_mlp": "none",
                     "width": "d512_h8_kv4", "mlp_mult": 2, "depth_signal": "none", "quant_bits": 8,
                     "embedding_bits.q8": 0},
    "loop45_untied_mlp": {"pattern": "loop_middle", "loop_middle.unique_blocks": 11, "loop_middle.start": 4,
                          "loop_middle.end": 5, "loop_middle.repeats": 2, "untie_mlp": "full", "width": "d512_h8_kv4",
                          "mlp_mult": 2, "depth_signal": "none", "quant_bits": 5, "embedding_bits": 0},
}

# Presets the default space does not contain (yet), and why.
OUTSIDE_DEFAULT_SPACE = {
    # The record's techniques (partial RoPE, value embeddings, lanes, ...): spaces/record.yaml holds both presets.
    "record_0331_mini_recurrence": "model techniques the default space does not search",
    "record_0331_fit": "model techniques the default space does not search",
}

TINY_WIDTH = {"model_dim": 64, "num_heads": 2, "num_kv_heads": 1}
SMALL = {
    "base": {"model": {"vocab_size": 64}, "train": {"seq_len": 32, "micro_batch_tokens": 64, "batch_tokens": 128,
                                                    "val_prefix_tokens": 32}},
    "unique_blocks": [2, 3],
    "patterns": {"none": {}, "cycle": {"unique_blocks": [2], "repeats": [2, 3]},
                 "loop_middle": {"start": {"min": 0, "max": "n - 1"}, "end": {"min": "start", "max": "n - 1"},
                                 "repeats": [2]},
                 "explicit": [[0, 1, 1, 0]]},
    "untie_mlp": ["none", "full"],
    "width": [TINY_WIDTH, {"model_dim": 128, "num_heads": 2, "num_kv_heads": 2}],
    "quant_bits": [6, 8],
}


def write(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_space_loads_and_is_finite():
    space = load_space(DEFAULT)
    assert space.size() > 1000
    assert {p.family for p in space.patterns} == set(patterns.FAMILY_PARAMS)


def test_width512_space_shares_one_block_shape_and_contains_the_512_presets():
    # spaces/width512.yaml exists so every trial reuses one compiled layer graph: one width, one MLP size.
    space = load_space(ROOT / "width512.yaml")
    shapes = {(cfg.model.model_dim, cfg.model.num_heads, cfg.model.num_kv_heads, cfg.model.mlp_mult)
              for _, cfg in space.configs()}
    assert shapes == {(512, 8, 4, 2.0)}
    for name in ("cycle3x3_512", "loop45_11x512", "loop45_untied_mlp", "tie_tail_11to15"):
        assert space.build(PRESET_POINTS[name]).model == load(ROOT / "presets" / f"{name}.yaml").model


def test_preset_table_covers_every_preset_file():
    assert set(PRESET_POINTS) | set(OUTSIDE_DEFAULT_SPACE) == {p.stem for p in (ROOT / "presets").glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(OUTSIDE_DEFAULT_SPACE))
def test_presets_outside_the_default_space_are_found_outside_it(name):
    assert load_space(DEFAULT).assignment_for(load(ROOT / "presets" / f"{name}.yaml")) is None


# The default space's knobs, each at "off" in every preset above.
DEFAULT_KNOBS_OFF = {"model.xsa_last": 0, "model.bigram_buckets": 0}


@pytest.mark.parametrize("name", sorted(PRESET_POINTS))
def test_every_preset_is_a_point_of_the_default_space(name):
    preset = load(ROOT / "presets" / f"{name}.yaml")
    built = load_space(DEFAULT).build({**PRESET_POINTS[name], **DEFAULT_KNOBS_OFF})
    assert built.model == preset.model and built.export == preset.export and built == preset


def test_enumeration_matches_an_independent_count(tmp_path):
    space = load_space(write(tmp_path, SMALL))
    orders = []
    for n in (2, 3):
        orders.append(tuple(range(n)))
        orders += [patterns.loop_middle(n, s, e, 2) for s in range(n) for e in range(s, n)]
    orders += [patterns.cycle(2, 2), patterns.cycle(2, 3), (0, 1, 1, 0)]
    def count(os):
        return sum((2 if patterns.has_repeats(o) else 1) for o in os) * 2 * 2  # untie x width x bits

    points = list(space.configs())
    assert space.size() == len(points) == count(orders)
    # loop_middle(2, 0, 1, 2) and cycle(2, 2) are the same order: families may overlap.
    assert len({cfg for _, cfg in points}) == count(set(orders)) < count(orders)
    for assignment, cfg in points[:: max(1, len(points) // 25)]:
        assert space.build(assignment) == cfg
        assert cfg.train.seq_len == 32 and cfg.model.vocab_size == 64


def test_build_rejects_bad_assignments(tmp_path):
    space = load_space(write(tmp_path, SMALL))
    good, _ = next(space.configs())
    with pytest.raises(SpaceError, match="is not a choice"):
        space.build({**good, "quant_bits": 5, "embedding_bits": 0})
    with pytest.raises(SpaceError, match="does not use"):
        space.build({**good, "loop_middle.start": 0})


def test_suggest_with_optuna_returns_built_configs_and_prunes_oversized(tmp_path):
    data = dict(SMALL, width=[TINY_WIDTH, {"model_dim": 1024, "num_heads": 8, "num_kv_heads": 4}],
                unique_blocks=[3, 9], base={"model": {"vocab_size": 1024}})
    space = load_space(write(tmp_path, data))
    seen = []

    def objective(trial):
        cfg = space.suggest(trial)
        assert space.predict(cfg).fits
        seen.append((trial.params, cfg))
        return float(cfg.model.model_dim)

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=8))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=40)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert seen and pruned
    for params, cfg in seen:
        assert space.build(params) == cfg
    for t in pruned:
        assert t.user_attrs["size_margin_bytes"] < 0
        assert not space.predict(space.build(t.params)).fits
    names = set().union(*(t.params for t in study.trials))
    assert {"pattern", "width", "quant_bits"} <= names and "loop_middle.start" in names


def test_embedding_axis_offers_only_widths_above_the_matrices(tmp_path):
    space = load_space(write(tmp_path, dict(SMALL, embedding_bits=[0, 8, 16])))
    plain = load_space(write(tmp_path, SMALL, "plain.yaml"))
    offered = {6: set(), 8: set()}
    for assignment, cfg in space.configs():
        offered[cfg.export.quant_bits].add(cfg.export.embedding_bits)
        assert space.build(assignment) == cfg
    # int8 matrices never get an int8 "wider" embedding: that would repeat the 0 point.
    assert offered == {6: {0, 8, 16}, 8: {0, 16}}
    assert space.size() == plain.size() // 2 * (3 + 2)
    assert len({cfg for _, cfg in space.configs()}) == len({cfg for _, cfg in plain.configs()}) // 2 * (3 + 2)
    point, cfg = next((a, c) for a, c in space.configs() if c.export.quant_bits == 8 and c.export.embedding_bits == 16)
    assert point["embedding_bits.q8"] == 16 and "embedding_bits" not in point
    with pytest.raises(SpaceError, match=r"lacks 'embedding_bits.q8'; choose one of \[0, 16\]"):
        space.build({**{k: v for k, v in point.items() if k != "embedding_bits.q8"}, "embedding_bits": 16})
    # A float16 (or int8) embedding costs bytes the size model sees: the search's size gate prices it.
    default = load_space(DEFAULT)
    sizes = [default.predict(default.build({**PRESET_POINTS["loop45_11x512"], **DEFAULT_KNOBS_OFF, "embedding_bits": bits}))
             .predicted_artifact_bytes for bits in (0, 8, 16)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_embedding_axis_without_a_quant_axis_reads_base_bits(tmp_path):
    data = {k: v for k, v in SMALL.items() if k != "quant_bits"}
    data["base"] = {**SMALL["base"], "export": {"quant_bits": 6}}
    space = load_space(write(tmp_path, dict(data, embedding_bits=[8, 16])))
    assert {cfg.export.embedding_bits for _, cfg in space.configs()} == {8, 16}
    assert all("embedding_bits" in a for a, _ in space.configs())
    with pytest.raises(SpaceError, match="base.export.embedding_bits"):
        load_space(write(tmp_path, dict(data, embedding_bits=[8], base={**data["base"], "export": {"embedding_bits": 8}})))


def test_suggest_names_the_embedding_choice_per_quant_bits(tmp_path):
    space = load_space(write(tmp_path, dict(SMALL, embedding_bits=[0, 8, 16])))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    built = []
    study.optimize(lambda trial: built.append(space.suggest(trial)) or 0.0, n_trials=60)
    for t, cfg in zip(study.trials, built):
        key = "embedding_bits" if t.params["quant_bits"] == 6 else "embedding_bits.q8"
        assert t.params[key] == cfg.export.embedding_bits
    assert {cfg.export.embedding_bits for cfg in built} == {0, 8, 16}


def test_sample_returns_distinct_feasible_points(tmp_path):
    space = load_space(write(tmp_path, SMALL))
    everything = {cfg for _, cfg in space.configs()}
    picked = space.sample(6, seed=3)
    assert len(picked) == len(set(picked)) == 6
    assert all(cfg in everything and space.predict(cfg).fits for cfg in picked)
    assert picked == space.sample(6, seed=3) and picked != space.sample(6, seed=4)


def test_with_base_and_with_axes(tmp_path):
    space = load_space(DEFAULT).with_axes(width=[TINY_WIDTH], mlp_mult=[2]).with_base({"train": {"max_steps": 7}})
    cfg = space.sample(1, seed=0)[0]
    assert cfg.model.model_dim == 64 and cfg.train.max_steps == 7
    with pytest.raises(SpaceError, match=r"base\.model\.model_dim.*fix:"):
        space.with_base({"model": {"model_dim": 256}})


# ---- validation: each malformed space names the file, the key and the fix --------------------------
def bad(**changes):
    data = {k: v for k, v in SMALL.items()}
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    "data,key",
    [
        (bad(widht=[64]), "widht"),
        (bad(patterns={"loop_middle": {"start": [0], "end": [5], "repeats": [2]}}), "patterns.loop_middle.end"),
        (bad(patterns={"loop_middle": {"start": [4], "end": [4], "repeats": [2]}}), "patterns.loop_middle.start"),
        (bad(patterns={"explicit": [[0, 1, 3]]}), r"patterns.explicit\[0\]"),
        (bad(patterns={"spiral": {}}), "patterns.spiral"),
        (bad(patterns={"cycle": {"repeats": [2], "stride": [1]}}), "patterns.cycle.stride"),
        (bad(patterns={"loop_middle": {"start": {"min": 0, "max": "end"}, "end": [1], "repeats": [2]}}),
         "patterns.loop_middle.start.max"),
        (bad(patterns={"loop_middle": {"start": {"min": 2, "max": "n - 1"}, "end": {"min": "start", "max": "n - 1"},
                                       "repeats": [2]}}), "patterns.loop_middle.start"),
        (bad(width=[{"model_dim": 100, "num_heads": 8, "num_kv_heads": 4}]), r"width\[0\]"),
        (bad(width=[{"model_dim": 96, "num_heads": 32, "num_kv_heads": 4}]), r"width\[0\]"),
        (bad(width=[96]), r"width\[0\]"),
        (bad(quant_bits=[]), "quant_bits"),
        (bad(quant_bits=[4]), "quant_bits"),
        (bad(embedding_bits=[7]), "embedding_bits"),
        (bad(embedding_bits=[16, 16]), "embedding_bits"),
        (bad(unique_blocks=None), "unique_blocks"),
        (bad(base={"model": {"unique_blocks": 4}}), "base.model.unique_blocks"),
        (bad(base={"train": {"sequence_len": 4}}), "base"),
        (bad(width=[{"model_dim": 2048, "num_heads": 16, "num_kv_heads": 8}], unique_blocks=[3], quant_bits=[8],
             base={"model": {"vocab_size": 1024}}), r"\(whole space\)"),
    ],
)
def test_malformed_space_names_file_key_and_fix(tmp_path, data, key):
    path = write(tmp_path, data, "broken.yaml")
    with pytest.raises(SpaceError, match=rf"broken\.yaml: {key}.*fix: ") as err:
        load_space(path)
    assert str(path) in str(err.value)


def test_nothing_fits_reports_smallest_prediction(tmp_path):
    data = bad(width=[{"model_dim": 2048, "num_heads": 16, "num_kv_heads": 8}], unique_blocks=[3], quant_bits=[8],
               base={"model": {"vocab_size": 1024}})
    with pytest.raises(SpaceError, match=r"no config fits.*vs limit 16,000,000: does NOT fit"):
        load_space(write(tmp_path, data))


def test_missing_file_says_so(tmp_path):
    with pytest.raises(SpaceError, match="no such space file"):
        load_space(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", sorted(PRESET_POINTS))
def test_assignment_for_finds_each_preset_in_the_default_space(name):
    space = load_space(DEFAULT)
    preset = load(ROOT / "presets" / f"{name}.yaml")
    assignment = space.assignment_for(preset)
    assert assignment is not None and space.build(assignment) == preset


def test_assignment_for_a_config_outside_the_space_is_none():
    space = load_space(DEFAULT)
    wider = load(ROOT / "presets" / "baseline.yaml", ["model.model_dim=1024", "model.num_heads=16",
                                                       "model.num_kv_heads=8"])
    assert space.assignment_for(wider) is None
    other_zstd = load(ROOT / "presets" / "baseline.yaml", ["export.zstd_level=3"])
    assert space.assignment_for(other_zstd) is None  # the export section must match too
