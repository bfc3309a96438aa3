"""--trials-per-gpu: a real local Ray search whose concurrent trials take turns to train on one device (the CPU
here; on a GPU node the lease is per GPU), with their start-up overlapping the holder's training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.analysis import device_use

from search import store
from search.analysis.report import load_study, write_report
from tests.search_fixtures import run_local_search, tiny_settings, write_space


@pytest.fixture(scope="module")
def shared_search(tmp_path_factory, tiny_corpus):
    root = tmp_path_factory.mktemp("shared")
    settings = tiny_settings(root / "runs", tiny_corpus, write_space(root), "cpu-shared", trials=6,
                             trials_per_gpu=2, max_concurrent=2)
    return run_local_search(settings)


def test_trials_on_one_device_never_train_at_the_same_time(shared_search):
    entries = device_use.read_entries(Path(store.experiment_path(shared_search)))
    launched = [t for t in load_study(shared_search).get_trials(deepcopy=False) if t.user_attrs.get("tune_trial_id")]
    assert len(entries) == len(launched) == shared_search.trials
    assert len({e["device"] for e in entries}) == 1 and all(e["trials_per_gpu"] == 2 for e in entries)
    turns = sorted((e["acquired_at"], e["released_at"]) for e in entries)
    for (_, released), (acquired, _) in zip(turns, turns[1:]):
        assert acquired >= released - 0.05, turns  # the next holder starts after the last one let go
    # Some trial started up while another trained, and waited for it: the overlap the option is for.
    waited = [e for e in entries if e["wait_s"] > 0.1]
    assert waited, entries
    for e in waited:
        assert any(o is not e and e["started_at"] < o["released_at"] and o["acquired_at"] < e["acquired_at"]
                   for o in entries)


def test_report_shows_the_waits_and_the_device_use(shared_search):
    study = {t.number: t for t in load_study(shared_search).get_trials(deepcopy=False)}
    entries = device_use.read_entries(Path(store.experiment_path(shared_search)))
    paths = write_report(shared_search)
    info = json.loads(paths["summary"].read_text())
    devices = info["devices"]
    spans = sum(e["released_at"] - e["started_at"] for e in entries)
    assert devices["devices"] == 1 and devices["trials"] == shared_search.trials
    assert devices["in_use_s"] < spans  # overlapping trials count once
    assert devices["train_s"] == pytest.approx(sum(e["train_s"] for e in entries))
    assert 0 < devices["outside_training_pct"] < 100
    first = min(e["acquired_at"] for e in entries) - min(e["started_at"] for e in entries)
    assert devices["before_first_training_s"] == pytest.approx(first)  # the two first trials started together
    assert devices["outside_training_after_first_pct"] < devices["outside_training_pct"]
    assert info["time"]["wait_s"] == pytest.approx(
        sum(t.user_attrs.get("wait_s", 0.0) for t in study.values()), abs=1e-6) and info["time"]["wait_s"] > 0
    for t in study.values():  # pruned trials too: their stopping rung carried these
        if t.user_attrs.get("status") in ("pruned", "complete"):
            assert t.user_attrs.get("compile_s") is not None and "wait_s" in t.user_attrs, t.user_attrs
    text = paths["table"].read_text()
    assert "## Device use" in text and "| device | trials | in_use_s |" in text
