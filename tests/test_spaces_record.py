"""spaces/record.yaml: the space around the depth-recurrence record, with the record as a point."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from spaces.space import parse_space
from trainer.run_config import TrainConfig, load

ROOT = Path(__file__).resolve().parents[1] / "spaces"
RECORD_SPACE = ROOT / "record.yaml"
RECORD = ROOT / "presets" / "record_0331_mini_recurrence.yaml"
# The record's point: the author's hand-swept choices.
RECORD_POINT = {"pattern": "loop_middle", "unique_blocks": 11, "loop_middle.start": 4, "loop_middle.end": 5,
                "loop_middle.repeats": 2, "untie_mlp": "repeats", "width": "d512_h8_kv4", "mlp_mult": 3,
                "quant_bits": 5, "model.parallel_from_block": 7, "model.xsa_last": 11,
                "train.recurrence_start_fraction": 0.48}


def train_keys_missing(knobs: dict) -> list[str]:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return [k for k in knobs if k.startswith("train.") and k.split(".", 1)[1] not in fields]


def record_space():
    """The space, less any train knob whose TrainConfig field this tree does not have yet (named in the result)."""
    data = yaml.safe_load(RECORD_SPACE.read_text())
    missing = train_keys_missing(data["knobs"])
    for key in missing:
        del data["knobs"][key]
    return parse_space(data, str(RECORD_SPACE)), missing


def test_the_record_is_a_point_with_the_authors_choices():
    space, missing = record_space()
    preset = load(RECORD)
    point = space.assignment_for(preset)
    assert point == {k: v for k, v in RECORD_POINT.items() if k not in missing}
    assert space.build(point) == preset  # model, train and export alike


def test_recurrence_start_fraction_is_searched_around_the_records_value():
    data = yaml.safe_load(RECORD_SPACE.read_text())
    if train_keys_missing(data["knobs"]):
        pytest.skip("train.recurrence_start_fraction is not a TrainConfig field in this tree yet; "
                    "the other knobs are tested without it")
    space, _ = record_space()
    fractions = {cfg.train.recurrence_start_fraction for _, cfg in space.configs()}
    assert fractions == {0.0, 0.3, 0.48, 0.6}
    assert load(RECORD).train.recurrence_start_fraction == 0.48


def test_every_point_is_an_eleven_block_loop_below_the_lanes():
    space, _ = record_space()
    loops = set()
    for n, order in space.orders():
        repeated = sorted({b for b in order if order.count(b) > 1})
        assert n == 11 and 1 <= len(repeated) <= 3 and max(repeated) < 7
        assert len(order) - 11 in (len(repeated), 2 * len(repeated))  # one or two extra passes
        loops.add(tuple(repeated))
    assert len(loops) == 5 + 5 + 5 - 2 - 1 and (4, 5) in loops  # starts 2..6, lengths 1..3, ends <= 6
    widths, fits = set(), 0
    for i, a in enumerate(space.assignments()):
        if i % 17:
            continue  # a spread of points: building every one takes minutes
        cfg = space.build(a)
        m = cfg.model
        assert m.bigram_buckets == 2816 and m.value_embed_layers == (9, 10) and m.parallel_from_block in (-1, 7, 8)
        if a.get("untie_mlp") == "first_repeat":
            assert len(m.untie_mlp) == len(set(m.untie_mlp)) == len({b for b in m.schedule_order
                                                                     if m.schedule_order.count(b) > 1})
        widths.add((m.model_dim, m.head_dim))
        fits += space.predict(cfg).fits
    assert widths == {(512, 64), (576, 72)} and fits > 0
