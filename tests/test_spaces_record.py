"""spaces/record.yaml: the space around the depth-recurrence record, with the record as a point."""
from pathlib import Path

import optuna

from spaces.space import load_space
from trainer.run_config import load

ROOT = Path(__file__).resolve().parents[1] / "spaces"
RECORD_SPACE = ROOT / "record.yaml"
RECORD = ROOT / "presets" / "record_0331_mini_recurrence.yaml"
# The record's point: the author's hand-swept choices.
RECORD_POINT = {"pattern": "loop_middle", "unique_blocks": 11, "loop_middle.start": 4, "loop_middle.end": 5,
                "loop_middle.repeats": 2, "untie_mlp": "repeats", "width": "d512_h8_kv4", "mlp_mult": 3,
                "quant_bits": 5, "embedding_bits": 8, "model.parallel_from_block": 7, "model.xsa_last": 11,
                "train.recurrence_start_fraction": 0.48, "train.average": "ema",
                "train.average_restart_at_recurrence": False, "export.upgrade": 32, "export.gptq": True}
# record_0331_fit.yaml: the same run with int6 embeddings, no GPTQ and as many int6 upgrades as are predicted to fit.
FIT = ROOT / "presets" / "record_0331_fit.yaml"
FIT_POINT = {**RECORD_POINT, "embedding_bits": 6, "export.upgrade": "fill", "export.gptq": False}


def random_points(space, trials: int = 150) -> list:
    """(params, config) of random walks through the space (enumerating its ~10^5 points takes minutes)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    study.optimize(lambda t: configs.append(space.suggest(t, require_fit=False)) or 0.0, n_trials=trials)
    return [(t.params, cfg) for t, cfg in zip(study.trials, configs)]


def record_space():
    return load_space(RECORD_SPACE)


def test_the_record_is_a_point_with_the_authors_choices():
    space = record_space()
    preset = load(RECORD)
    point = space.assignment_for(preset)
    assert point == RECORD_POINT
    assert space.build(point) == preset  # model, train and export alike
    assert not space.predict(preset).fits  # the gate turns the record's own export away (see the preset)


def test_the_fitting_variant_is_a_point_that_fits():
    space = record_space()
    preset = load(FIT)
    point = space.assignment_for(preset)
    assert point == FIT_POINT
    assert space.build(point) == preset and space.predict(preset).fits


def test_recurrence_start_fraction_is_searched_around_the_records_value():
    space = record_space()
    fractions = {cfg.train.recurrence_start_fraction for _, cfg in random_points(space)}
    assert fractions == {0.0, 0.3, 0.48, 0.6}
    assert load(RECORD).train.recurrence_start_fraction == 0.48


def test_every_point_is_eleven_blocks_looped_below_the_lanes_or_not_at_all():
    space = record_space()
    loops = set()
    for n, order in space.orders():
        repeated = sorted({b for b in order if order.count(b) > 1})
        assert n == 11
        if not repeated:  # the one order without a loop
            assert list(order) == list(range(11)) and () not in loops
        else:
            assert 1 <= len(repeated) <= 3 and max(repeated) < 7
            assert len(order) - 11 in (len(repeated), 2 * len(repeated))  # one or two extra passes
        loops.add(tuple(repeated))
    assert len(loops) == 5 + 5 + 5 - 2 - 1 + 1 and (4, 5) in loops  # starts 2..6, lengths 1..3, ends <= 6; none
    widths, fits = set(), 0
    for a, cfg in random_points(space):
        m = cfg.model
        assert m.bigram_buckets == 2816 and m.value_embed_layers == (9, 10) and m.parallel_from_block in (-1, 7, 8)
        assert space.build(a) == cfg
        if a.get("untie_mlp") == "first_repeat":
            assert len(m.untie_mlp) == len(set(m.untie_mlp)) == len({b for b in m.schedule_order
                                                                     if m.schedule_order.count(b) > 1})
        assert ("export.upgrade" in a) == (cfg.export.quant_bits == 5)
        widths.add((m.model_dim, m.head_dim))
        fits += space.predict(cfg).fits
    assert widths == {(512, 64), (576, 72)} and fits > 0


def test_the_average_is_searched_and_restarted_only_where_it_can_be():
    points = random_points(record_space())
    assert {cfg.train.average for _, cfg in points} == {"ema", "none"}
    restarted = [(params, cfg) for params, cfg in points if cfg.train.average_restart_at_recurrence]
    assert restarted and all(cfg.train.average == "ema" and cfg.train.recurrence_start_fraction > 0
                             for _, cfg in restarted)
    # The knob is asked only where it means something: never with no average or a loop from step 0.
    for params, cfg in points:
        asked = "train.average_restart_at_recurrence" in params
        assert asked == (cfg.train.average == "ema" and cfg.train.recurrence_start_fraction > 0)
