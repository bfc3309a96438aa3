"""Rung fidelity pooled over several searches of one budget: one search completes few trials (4-6 at 180 s on
one GPU), too few for a rank correlation to say much, so `python -m search fidelity A B ...` ranks them together."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from search.analysis.fidelity import score_milestones
from search.analysis.report import (CUT_NOTE, P_POSITIVE_NOTE, RUNG_NOTES, fidelity_frame, markdown_table,
                           rung_cooldown_fraction, rungs_after_roundtrip, study_rung_values)
from search.settings import SearchSettings, SettingsError


def check_poolable(searches: Sequence[tuple[SearchSettings, optuna.Study]]) -> None:
    """Raise SettingsError unless the searches share a budget and a way of scoring rungs."""
    if not searches:
        raise SettingsError("fidelity: no searches given; pass one or more search names")
    names = [s.name for s, _ in searches]
    if len(set(names)) != len(names):
        raise SettingsError(f"fidelity: a search is named twice in {names}; pass each search once")
    budgets = {s.name: s.budget_s for s, _ in searches}
    if len(set(budgets.values())) > 1:
        raise SettingsError(f"fidelity: the searches train to different budgets {budgets}; a rung's rank only "
                            f"predicts the final val_bpb of its own budget, so pass searches of one --budget-s")
    scoring = {s.name: rungs_after_roundtrip(study, s) for s, study in searches}
    if len(set(scoring.values())) > 1:
        raise SettingsError(f"fidelity: the searches score rungs differently (after the quantization round trip: "
                            f"{scoring}); pass searches that all set --rung-roundtrip the same way")
    cooldown = {s.name: rung_cooldown_fraction(study, s) for s, study in searches}
    if len(set(cooldown.values())) > 1:
        raise SettingsError(f"fidelity: the searches cool their rungs down differently "
                            f"(rung_cooldown_fraction: {cooldown}); pass searches that all set "
                            "--rung-cooldown-fraction the same way")
    devices = {s.name: trained_on(study) for s, study in searches}
    if len(set().union(*devices.values())) > 1:
        # In one budget an H200 trained 12% more steps than an H100 (BENCHMARKS.md, "Chip differences"), so the
        # rungs and finals of one chip would rank against another's as if they were better configs.
        shown = {name: sorted(names) for name, names in devices.items() if names}
        raise SettingsError(f"fidelity: the trials trained on different kinds of device {shown}; a faster device "
                            f"trains more steps in the same budget, so pass searches run on one kind of device")


def trained_on(study: optuna.Study) -> set[str]:
    """The devices the completed trials of a study name (none for studies from before the device was recorded)."""
    return {str(t.user_attrs["device"]) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("device")}


def _keyed(search: str, by_trial: dict) -> dict:
    """Trial numbers repeat across searches: pooled, a trial is keyed by (search, number)."""
    return {(search, t): v for t, v in by_trial.items()}


def pooled_fidelity(searches: Sequence[tuple[SearchSettings, optuna.Study]]) -> pd.DataFrame:
    """Fidelity rows of each search, then of all their completed trials ranked together (search = 'pooled')."""
    check_poolable(searches)
    frames, at_all, finals_all, prequant_all, before_all, asha_all = [], {}, {}, {}, {}, set()
    for settings, study in searches:
        at, finals, prequant, at_before = study_rung_values(study, settings)
        asha = settings.reported_milestones_s
        rows = score_milestones(at, finals, asha, prequant, at_before, keep_fraction=1 / settings.reduction_factor)
        frames.append(fidelity_frame(rows).assign(search=settings.name))
        for pooled, own in ((at_all, at), (before_all, at_before)):  # per milestone
            for m, values in own.items():
                pooled.setdefault(m, {}).update(_keyed(settings.name, values))
        finals_all.update(_keyed(settings.name, finals))
        prequant_all.update(_keyed(settings.name, prequant))
        asha_all.update(asha)
    if len(searches) > 1:
        keep = {1 / s.reduction_factor for s, _ in searches}  # a cut's share only where the searches agree
        pooled = score_milestones(at_all, finals_all, sorted(asha_all), prequant_all, before_all,
                                  keep_fraction=keep.pop() if len(keep) == 1 else None)
        frames.append(fidelity_frame(pooled).assign(search="pooled"))
    df = pd.concat(frames, ignore_index=True)
    return df[["search", *[c for c in df.columns if c != "search"]]]


def write_pooled(searches: Sequence[tuple[SearchSettings, optuna.Study]], table: pd.DataFrame,
                 out_dir: Path) -> dict[str, Path]:
    """Write the pooled_fidelity table of these searches as fidelity_pooled.csv and .md under out_dir; return
    their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "fidelity_pooled.csv", "markdown": out_dir / "fidelity_pooled.md"}
    table.to_csv(paths["csv"], index=False)
    names = ", ".join(f"`{s.name}`" for s, _ in searches)
    lines = [f"# Rung fidelity of {names} (budget {searches[0][0].budget_s:g} s)", "",
             "Spearman of each rung's val_bpb against the final val_bpb over completed trials, per search and "
             "pooled (every completed trial of every search ranked together).", "",
             RUNG_NOTES[rungs_after_roundtrip(searches[0][1], searches[0][0])], "", P_POSITIVE_NOTE, "",
             CUT_NOTE, "",
             markdown_table(table), ""]
    paths["markdown"].write_text("\n".join(lines))
    return paths
