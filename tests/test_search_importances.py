"""What the search learned: Optuna's parameter importances in the search report, from a real study."""
from __future__ import annotations

import json
import random

import optuna
import pytest

from search.analysis.report import IMPORTANCE_MIN_TRIALS, param_importances, write_report
from search.tune.searcher import open_study
from spaces.space import load_space
from tests.search_fixtures import tiny_settings, write_space


def run_study(settings, trials: int, seed: int = 0) -> optuna.Study:
    """Trials through the space's own suggest; val_bpb is driven by the block count, plus a little noise."""
    space = load_space(settings.space)
    study = open_study(settings)
    study.sampler = optuna.samplers.RandomSampler(seed=seed)  # every parameter's values seen evenly
    rng = random.Random(seed)

    def objective(trial):
        cfg = space.suggest(trial)  # configs over the limit are pruned, as in a search
        return 1.0 + 0.5 * cfg.model.unique_blocks + 0.001 * rng.random()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=trials)
    return study


@pytest.fixture
def settings_for(tmp_path, tiny_corpus):
    def make(name: str):
        space = write_space(tmp_path / name)
        return tiny_settings(tmp_path / name / "searches", tiny_corpus, space, name)
    return make


def test_importances_sum_to_one_name_the_space_params_and_find_the_one_that_matters(settings_for):
    settings = settings_for("many")
    study = run_study(settings, trials=40)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert IMPORTANCE_MIN_TRIALS <= len(completed) < 40  # the 2048 width is pruned by the size gate

    paths = write_report(settings, "md")
    info = json.loads(paths["summary"].read_text())["importances"]
    assert info["trials"] == len(completed) and info["evaluator"] == "PED-ANOVA" and info["note"] == ""
    importances = info["importances"]
    assert sum(importances.values()) == pytest.approx(1.0)
    assert set(importances) <= {name for t in completed for name in t.params}
    assert {"unique_blocks", "width", "pattern"} <= set(importances)
    assert max(importances, key=importances.get) == "unique_blocks"
    text = paths["table"].read_text()
    assert "parameter importances" in text and f"over {len(completed)} completed trials" in text
    assert "| unique_blocks |" in text.replace("  ", " ")

    html = write_report(settings, "html")["table"].read_text()
    assert "<h2>Parameter importances</h2>" in html and "unique_blocks" in html


def test_few_trials_are_flagged_and_one_gives_none(settings_for):
    settings = settings_for("few")
    study = run_study(settings, trials=0)
    for seed in range(50):  # one trial at a time until 1, then 3, have completed
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) == 1:
            info = param_importances(study)
            assert info["trials"] == 1 and info["importances"] == {} and "no importances" in info["note"]
        if len(done) == 3:
            break
        study = run_study(settings, trials=1, seed=seed)
    info = param_importances(study)
    assert info["trials"] == 3 and "too few" in info["note"]
    assert sum(info["importances"].values()) == pytest.approx(1.0)
