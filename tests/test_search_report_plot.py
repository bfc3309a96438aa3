"""The report's plot, HTML page, number formats and sampler header, on a study the real searcher filled in."""
from __future__ import annotations

import base64
import dataclasses
import re

import pandas as pd
import pytest

from search import store
from search.analysis.report import (
    frontier_figure, frontier_table, integer_columns, load_study, markdown_table, trials_table, write_report, y_top,
)
from search.tune.searcher import RecurrenceSearcher
from tests.search_fixtures import tiny_settings, write_space

# (Tune id, what its trainable reported); the searcher turns these into study trials.
FINALS = {"a": (1.30, 40_000), "b": (1.25, 52_000), "c": (1.40, 38_000), "d": (1.35, 60_000)}
PRUNED_RUNG = {"e": 1.90, "f": 9.50}  # f: a diverging trial's rung, far above everything else


def _fill(settings) -> dict[str, int]:
    """Launch six trials through the searcher and finish them as Tune would; return Tune id -> trial number."""
    searcher = RecurrenceSearcher(settings)
    numbers = {tid: searcher.suggest(tid)["optuna_number"] for tid in [*FINALS, *PRUNED_RUNG]}
    for tid, (val_bpb, size) in FINALS.items():
        searcher.on_trial_result(tid, {"train_s": 0.5, "val_bpb": val_bpb + 0.5})
        searcher.on_trial_complete(tid, {"final": True, "val_bpb": val_bpb, "artifact_bytes": size, "steps": 40})
    for tid, rung in PRUNED_RUNG.items():
        searcher.on_trial_complete(tid, {"train_s": 0.5, "val_bpb": rung})
    return numbers


@pytest.fixture
def filled(tmp_path):
    paths = {"data": tmp_path / "data", "tokenizer": tmp_path / "tok.model"}  # never read: no trial trains here
    settings = tiny_settings(tmp_path / "runs", paths, write_space(tmp_path), "plot", seed=5)
    store.save_settings(settings)
    return settings, _fill(settings)


def test_frontier_points_are_labelled_pruned_ones_marked_and_outliers_clipped(filled):
    settings, numbers = filled
    df = trials_table(load_study(settings))
    front = frontier_table(df)
    # (40k, 1.30), (52k, 1.25), (38k, 1.40) are non-dominated; (60k, 1.35) is dominated by (52k, 1.25).
    assert sorted(front["number"]) == sorted(numbers[t] for t in "abc")
    fig = frontier_figure(df, settings.limit_bytes, "t")
    ax = fig.axes[0]
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == sorted(f"#{numbers[t]}" for t in "abc")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pruned: last rung, not final" in legend
    clipped = [text for text in legend if "clipped" in text]
    assert len(clipped) == 1 and clipped[0].startswith("1 above") and "worst 9.500" in clipped[0]
    low, high = ax.get_ylim()
    assert high < 9.5 and 1.9 < high  # the outlier is off the axis, the ordinary pruned rung (1.90) is on it
    assert low < 1.25
    # the pruned rung is drawn with its own marker, at its rung value
    pruned = [c for c in ax.collections if c.get_label() == "pruned: last rung, not final"][0]
    assert pruned.get_offsets()[:, 1].tolist() == [1.90]


def test_y_top_keeps_every_feasible_finished_trial():
    y = pd.Series([1.2, 1.21, 1.22, 1.23, 3.0])
    assert y_top(y, pd.Series([1.2, 1.21])) == pytest.approx(1.23 + 1.5 * 0.02)  # fence: Q3 + 1.5 IQR
    assert y_top(y, pd.Series([1.2, 3.0])) == 3.0  # a feasible finished trial is never clipped
    assert y_top(pd.Series([1.0, 1.1]), pd.Series([], dtype=float)) == pytest.approx(1.1)  # nothing to clip


def test_html_report_embeds_the_plot_and_prints_integers(filled):
    settings, numbers = filled
    page = write_report(settings, "html")["table"].read_text()
    image = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert image and base64.b64decode(image.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(image.group(1)) > 10_000
    assert "<td>52,000</td>" in page and "52000.0" not in page and "&lt;NA&gt;" not in page
    assert "TPESampler(multivariate=True, group=True, constant_liar=True, n_startup_trials=10, seed=5)" in page


def test_csv_and_markdown_print_whole_numbers_as_integers(filled):
    settings, _ = filled
    paths = write_report(settings, "csv")
    csv = paths["table"].read_text()
    header = csv.splitlines()[0].split(",")
    rows = [line.split(",") for line in csv.splitlines()[1:]]
    for column in ("artifact_bytes", "virtual_layers", "rungs", "steps", "predicted_artifact_bytes"):
        values = [r[header.index(column)] for r in rows if r[header.index(column)]]
        assert values and all(re.fullmatch(r"-?\d+", v) for v in values), (column, values)
    assert "52000" in paths["frontier"].read_text() and "52000.0" not in paths["frontier"].read_text()
    table = trials_table(load_study(settings))
    md = markdown_table(table[["number", "virtual_layers", "artifact_bytes", "val_bpb"]])
    assert re.search(r"\| \d+ \| \d+ \| 52,000 \| 1\.2500 \|", md) and ".0000 |" not in md.split("1.2500")[0]
    assert integer_columns(table)["artifact_bytes"].dtype == "Int64"


def test_report_header_names_the_sampler_and_what_nsga2_learned_from(filled, tmp_path):
    settings, _ = filled
    md = write_report(settings, "md")["table"].read_text()
    assert "- sampler: TPESampler(multivariate=True, group=True, constant_liar=True, n_startup_trials=10, seed=5)" in md
    nsga = dataclasses.replace(settings, name="plot-nsga", sampler="nsga2", early_stopping="none")
    store.save_settings(nsga)
    _fill(nsga)
    md = write_report(nsga, "md")["table"].read_text()
    total = len(load_study(nsga).get_trials())
    assert ("NSGAIISampler(population_size=4, seed=5), optuna" in md
            and f"NSGA-II learns only from COMPLETE trials: it saw 4 of {total}" in md)
