"""`spaces from-influence`: a space looping the least influential runs of blocks of a Block Influence report."""
import json

import pytest
import yaml

from spaces import patterns
from spaces.cli import main
from spaces.from_influence import candidates
from spaces.space import SpaceError, load_space

# Block Influence of each block's first run in an 8-block run (hand-made).
BIS = [0.9, 0.5, 0.05, 0.04, 0.6, 0.03, 0.7, 0.8]
BASE = {
    "name": "tiny",
    "base": {"model": {"vocab_size": 64}, "train": {"seq_len": 32}},
    "unique_blocks": [8],
    "patterns": {"loop_middle": {"start": {"min": 1, "max": "n - 2"}, "end": {"min": "start", "max": "n - 2"},
                                 "repeats": [2, 3]}},
    "width": [{"model_dim": 64, "num_heads": 2, "num_kv_heads": 1}],
    "untie_mlp": ["none", "repeats"],
    "knobs": {"model.xsa_last": [0, 2]},
}


def write_report(path, bis, order=None):
    """An influence.json as `trainer influence` writes it (the run may itself have looped a block)."""
    order = order or list(range(len(bis)))
    runs, layers = {}, []
    for position, block in enumerate(order):
        runs[block] = runs.get(block, 0) + 1
        bi = bis[block] if runs[block] == 1 else 0.99  # a repeat's own BI never counts
        layers.append({"position": position, "block": block, "run": runs[block], "bi": bi, "rank": 0})
    path.write_text(json.dumps({"unique_blocks": len(bis), "order": order, "layers": layers}))
    return path


@pytest.fixture
def base_file(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def test_candidates_are_middle_runs_by_mean_bi():
    pairs = [(c.start, c.end) for c in candidates(BIS, (2,))]
    # Means: (2,3) 0.045, (1,2) 0.275, (4,5) 0.315, (3,4) 0.32, (5,6) 0.365; runs never hold block 0 or 7.
    assert pairs == [(2, 3), (1, 2), (4, 5), (3, 4), (5, 6)]
    # Lengths mixed, by mean BI: 5 (0.03), 3 (0.04), 2..3 (0.045), 2 (0.05), 1..3 (0.197), 3..5 (0.223), 2..4 (0.23).
    assert [(c.start, c.end) for c in candidates(BIS, (1, 2, 3))][:7] == [(5, 5), (3, 3), (2, 3), (2, 2), (1, 3),
                                                                          (3, 5), (2, 4)]


def test_the_written_space_loops_exactly_the_lowest_bi_runs(tmp_path, base_file, capsys):
    report = write_report(tmp_path / "influence.json", BIS, order=[0, 1, 2, 3, 4, 3, 4, 5, 6, 7])
    out = tmp_path / "mine.yaml"
    assert main(["from-influence", str(report), "--base", str(base_file), "--out", str(out), "--top", "2",
                 "--lengths", "2"]) == 0
    printed = capsys.readouterr().out
    assert "chose blocks 2..3: mean BI 0.0450" in printed and "chose blocks 1..2: mean BI 0.2750" in printed
    space = load_space(out)
    expected = {tuple(patterns.loop_middle(8, s, e, r)) for s, e in [(2, 3), (1, 2)] for r in (2, 3)}
    assert {order for _, order in space.orders()} == expected
    assert {cfg.model.schedule_order for _, cfg in space.configs()} == expected
    # Everything else is the base's: its axes and knobs are still searched.
    assert {cfg.model.xsa_last for _, cfg in space.configs()} == {0, 2}
    assert {a["untie_mlp"] for a, _ in space.configs()} == {"none", "repeats"}
    assert out.read_text().startswith("# Written by `python -m spaces from-influence")


def test_a_run_the_base_cannot_loop_is_skipped_with_its_reason(tmp_path, base_file, capsys):
    # Lanes from block 4: a loop over blocks 3..4 would run block 3 after the lanes began, which they cannot take;
    # it is skipped and the next lowest run, 4..5 (mean 0.305, before 2..3 at 0.31), is looped instead.
    data = dict(BASE, knobs={"model.parallel_from_block": [-1, 4]})
    base_file.write_text(yaml.safe_dump(data))
    write_report(tmp_path / "influence.json", [0.9, 0.5, 0.6, 0.02, 0.01, 0.6, 0.7, 0.8])
    out = tmp_path / "mine.yaml"
    assert main(["from-influence", str(tmp_path), "--base", str(base_file), "--out", str(out), "--top", "1",
                 "--lengths", "2", "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert "skipped blocks 3..4 (mean BI 0.0150)" in printed and "parallel_from_block" in printed
    assert {order for _, order in load_space(out).orders()} == {patterns.loop_middle(8, 4, 5, 2)}


def test_bad_input_names_the_problem(tmp_path, base_file, capsys):
    assert main(["from-influence", str(tmp_path), "--base", str(base_file), "--out", str(tmp_path / "x.yaml")]) == 1
    assert "run `python -m trainer influence" in capsys.readouterr().err
    (tmp_path / "influence.json").write_text(json.dumps({"layers": []}))
    with pytest.raises(SpaceError, match="not a Block Influence report"):
        from spaces.from_influence import read_influence
        read_influence(tmp_path)
    assert not (tmp_path / "x.yaml").exists()
