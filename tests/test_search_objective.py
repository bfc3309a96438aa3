"""`search run --objective`: the final figure a search minimizes (val_bpb, or val_bpb_sliding), and the report's
columns for both."""
from __future__ import annotations

import pytest
from optuna.trial import TrialState

from search.analysis.report import trials_table
from search.settings import SearchSettings, SettingsError
from search.tune.searcher import RecurrenceSearcher, open_study
from tests.search_fixtures import tiny_settings, write_space


def run_args(tmp_path, *extra):
    from search.cli import build_parser, settings_from_args

    for path in ("space.yaml", "tok.model"):
        (tmp_path / path).write_text("")
    base = ["run", "--name", "s1", "--space", str(tmp_path / "space.yaml"), "--data", str(tmp_path),
            "--tokenizer", str(tmp_path / "tok.model"), "--storage", str(tmp_path)]
    return settings_from_args(build_parser().parse_args(base + list(extra)))


def test_the_objective_is_val_bpb_unless_the_sliding_score_is_asked_for(tmp_path):
    assert run_args(tmp_path).objective == "val_bpb"
    sliding = run_args(tmp_path, "--objective", "val_bpb_sliding", "--set", "train.eval_stride=64")
    assert sliding.objective == "val_bpb_sliding"
    assert SearchSettings.from_json(sliding.to_json()).objective == "val_bpb_sliding"
    with pytest.raises(SettingsError, match=r"--objective: val_bpb_sliding needs .*--set train.eval_stride=N"):
        run_args(tmp_path, "--objective", "val_bpb_sliding")
    with pytest.raises(SettingsError, match="--objective"):
        run_args(tmp_path, "--objective", "val_bpb_sliding", "--set", "train.eval_stride=0")
    # A search saved before the setting existed reads as the plain objective.
    data = sliding.to_json().replace('"objective": "val_bpb_sliding",', "")
    assert SearchSettings.from_json(data).objective == "val_bpb"


def test_a_sliding_objective_search_ranks_by_the_sliding_score_and_reports_both(tmp_path, tiny_corpus):
    settings = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "sliding", seed=3,
                             objective="val_bpb_sliding", overrides=("train.eval_stride=8",))
    searcher = RecurrenceSearcher(settings)
    numbers = {tid: searcher.suggest(tid)["optuna_number"] for tid in ("a", "b")}
    final = {"final": True, "val_bpb": 1.5, "val_bpb_sliding": 1.42, "artifact_bytes": 40_000, "time_total_s": 5.0}
    searcher.on_trial_complete("a", final)
    searcher.on_trial_complete("b", {**final, "val_bpb_sliding": None})  # a trial that scored no sliding figure
    trials = {t.number: t for t in open_study(settings).get_trials(deepcopy=False)}
    a, b = trials[numbers["a"]], trials[numbers["b"]]
    assert a.state == TrialState.COMPLETE and a.value == 1.42 and a.user_attrs["val_bpb"] == 1.5
    assert b.state == TrialState.FAIL and b.user_attrs["reason"] == "final val_bpb_sliding is None"
    table = trials_table(open_study(settings)).set_index("number")
    assert table.loc[numbers["a"], "val_bpb"] == 1.5 and table.loc[numbers["a"], "val_bpb_sliding"] == 1.42
