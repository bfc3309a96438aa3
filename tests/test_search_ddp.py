"""Multi-worker trials go through Ray Train's TorchTrainer (DDP); here with 2 CPU workers (gloo)."""
from __future__ import annotations

from optuna.trial import TrialState

from search.analysis.report import load_study
from tests.search_fixtures import run_local_search, tiny_settings, write_space


def test_ddp_trials_report_rungs_checkpoint_and_finish(tmp_path, tiny_corpus):
    settings = tiny_settings(
        tmp_path / "runs", tiny_corpus, write_space(tmp_path), "ddp", trials=1, max_concurrent=1,
        cpus_per_trial=0.5, overrides=("train.batch_tokens=512",), extra={"cpu_ddp_workers": 2},
    )
    run_local_search(settings)
    launched = [t for t in load_study(settings).get_trials(deepcopy=False) if t.user_attrs.get("tune_trial_id")]
    assert len(launched) == 1
    for t in launched:
        assert t.user_attrs["status"] in ("complete", "pruned"), t.user_attrs.get("reason")
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.user_attrs["rungs"]
        folder = next((tmp_path / "runs" / "ddp").glob(f"t{t.number:04d}_*"))
        assert any(folder.glob("ddp/checkpoint_*/trainer_state.rank0.pt"))  # Ray Train's run, rank 0's state
