"""Full-scale rerun, for real on the CPU: tiny configs, 2 seeds, torchrun with gloo, crash and resume."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
from pathlib import Path

import optuna
import pytest
import yaml

from search import store
from search.rerun.run import RerunError, rerun
from search.rerun.cli import add_rerun_command, best_trial, trial_by_id
from search.settings import SearchSettings
from search.rerun.stats import record_criterion, welch_one_sided
from tests.conftest import TINY_MODEL, TINY_TRAIN
from trainer.run_config import from_dict

# Fewer steps and a shorter val split than the shared tiny config: each run is a torchrun launch.
TRAIN = {**TINY_TRAIN, "max_steps": 4, "warmdown_steps": 2, "final_val_tokens": 1025, "budget_s": 60.0}
CANDIDATE = {"model": {**TINY_MODEL, "unique_blocks": 1, "virtual_layers": [0, 0]}, "train": TRAIN, "export": {}}
BASELINE = {"model": {**TINY_MODEL, "unique_blocks": 2}, "train": TRAIN, "export": {}}
# Fails inside the trainer, after launch: the tokenizer has 320 pieces.
BROKEN_BASELINE = {**BASELINE, "model": {**BASELINE["model"], "vocab_size": 256}}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Two shared cores: one thread per rank keeps gloo ranks from fighting each other.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def cli(argv: list[str]) -> int:
    """Parse and run `rerun` exactly as the search CLI registers it."""
    parser = argparse.ArgumentParser(prog="python -m search")
    add_rerun_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rerun", *argv])
    return args.func(args)


def corpus_args(corpus: dict) -> list[str]:
    return ["--data", str(corpus["data"]), "--tokenizer", str(corpus["tokenizer"])]


@pytest.fixture(scope="module")
def finished(tiny_corpus, tmp_path_factory):
    """A 2-seed rerun that crashed on its first baseline run, then was fixed and run again to the end."""
    root = tmp_path_factory.mktemp("rerun")
    cand, broken, good = (write_yaml(root / f"{n}.yaml", d)
                          for n, d in (("cand", CANDIDATE), ("broken", BROKEN_BASELINE), ("base", BASELINE)))
    out = root / "out"
    common = ["--config", str(cand), "--gpus", "0", "--seeds", "2", "--seed-base", "1", "--budget-s", "60",
              *corpus_args(tiny_corpus), "--out", str(out)]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        crashed = cli(["tiny", *common, "--baseline-config", str(broken)])
    first_metrics = (out / "candidate" / "seed1" / "metrics.json").read_text()
    code = cli(["tiny", *common, "--baseline-config", str(good)])
    return {"out": out, "crashed": crashed, "error": err.getvalue(), "code": code, "first_metrics": first_metrics}


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_crash_names_the_run_and_keeps_finished_ones(finished):
    out = finished["out"]
    log = out / "baseline" / "seed1" / "launch.log"
    assert finished["crashed"] == 2
    assert "baseline seed 1 failed" in finished["error"] and str(log) in finished["error"]
    assert "vocab_size" in finished["error"]  # the rank's own error line, not only torchrun's summary
    # The candidate's seed 1 finished before the baseline crashed; the fixed rerun kept it untouched.
    assert (out / "candidate" / "seed1" / "metrics.json").read_text() == finished["first_metrics"]
    data = json.loads((out / "rerun.json").read_text())
    trained_now = {(label, r["seed"]): r["trained_now"] for label in ("candidate", "baseline")
                   for r in data[label]["runs"]}
    assert trained_now == {("candidate", 1): False, ("candidate", 2): True, ("baseline", 1): True,
                           ("baseline", 2): True}


def test_rerun_numbers_match_the_runs(finished):
    assert finished["code"] == 0
    out = finished["out"]
    data = json.loads((out / "rerun.json").read_text())
    per = {label: [metrics_of(out / label / f"seed{s}") for s in (1, 2)] for label in ("candidate", "baseline")}
    for label, runs in per.items():
        bpb, loss = [m["val_bpb"] for m in runs], [m["val_loss"] for m in runs]
        assert data[label]["val_bpb"]["mean"] == statistics.fmean(bpb)
        assert data[label]["val_bpb"]["std"] == statistics.stdev(bpb)
        assert data[label]["val_loss"]["mean"] == statistics.fmean(loss)
        assert [r["seed"] for r in data[label]["runs"]] == [m["config"]["train"]["seed"] for m in runs] == [1, 2]
        assert all(m["config"]["train"]["budget_s"] == 60.0 and m["world_size"] == 1 for m in runs)
        step = next(s for s in data["step_time"] if s["label"] == label)
        assert step["world_size"] == 1 and step["runs"] == 2
        assert step["step_ms_mean"] == statistics.fmean(m["step_ms"] for m in runs)
    # Both configs trained the same way: only the model section differs.
    cand_cfg, base_cfg = per["candidate"][0]["config"], per["baseline"][0]["config"]
    assert cand_cfg["train"] == base_cfg["train"] and cand_cfg["model"] != base_cfg["model"]

    c_loss, b_loss = [m["val_loss"] for m in per["candidate"]], [m["val_loss"] for m in per["baseline"]]
    c_bpb, b_bpb = [m["val_bpb"] for m in per["candidate"]], [m["val_bpb"] for m in per["baseline"]]
    assert data["welch"]["val_loss_nats"]["p_value"] == welch_one_sided(c_loss, b_loss).p_value
    assert data["welch"]["val_bpb"]["p_value"] == welch_one_sided(c_bpb, b_bpb).p_value
    verdict = record_criterion(c_loss, b_loss)
    assert data["record_criterion"]["p_value"] == verdict.welch.p_value
    assert data["record_criterion"]["passes"] == verdict.passes

    record = out / "record"
    assert {"README.md", "submission.json", "model.ptz", "train_seed1.log", "train_seed2.log"} <= {
        p.name for p in record.iterdir()}
    sub = json.loads((record / "submission.json").read_text())
    assert sub["val_bpb"] == data["candidate"]["val_bpb"]["mean"] and sub["seeds"] == [1, 2]
    assert sub["significance"]["p_value"] == verdict.welch.p_value
    assert (record / "model.ptz").read_bytes() == (out / "candidate" / "seed1" / "model.ptz").read_bytes()
    assert "weights.pt" not in {p.name for p in record.iterdir()}
    # Every run keeps its float weights, so `trainer export` can try other export settings on it later.
    assert all((out / label / f"seed{s}" / "weights.pt").is_file() for label in per for s in (1, 2))
    md = (out / "rerun.md").read_text()
    assert f"{data['candidate']['val_bpb']['mean']:.4f}" in md and "Step time per GPU count" in md


def test_resume_retrains_only_the_missing_seed(finished, tiny_corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    (out / "baseline" / "seed2" / "metrics.json").unlink()
    kept = {p: p.read_text() for p in out.glob("*/seed*/metrics.json")}
    result = rerun(from_dict(CANDIDATE), from_dict(BASELINE), [1, 2], 0, 60.0, tiny_corpus["data"],
                   tiny_corpus["tokenizer"], out, name="tiny", terminal=None)
    retrained = [(r.label, r.seed) for res in (result.candidate, result.baseline) for r in res.runs if r.trained_now]
    assert retrained == [("baseline", 2)]
    assert all(p.read_text() == text for p, text in kept.items())
    assert metrics_of(out / "baseline" / "seed2")["config"]["train"]["seed"] == 2


def test_kept_run_of_another_config_is_refused(finished, tiny_corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    with pytest.raises(RerunError, match="another config"):
        rerun(from_dict(BASELINE), None, [1], 0, 60.0, tiny_corpus["data"], tiny_corpus["tokenizer"], out,
              terminal=None)


def test_min_lead_tests_a_lead_above_the_margin(finished, tiny_corpus, tmp_path, capsys):
    """--min-lead-bpb X adds the one-sided Welch test of baseline - candidate > X beside the plain ones."""
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    per = {label: [metrics_of(out / label / f"seed{s}")["val_bpb"] for s in (1, 2)]
           for label in ("candidate", "baseline")}
    margin = 0.01
    code = cli(["tiny", "--config", str(write_yaml(tmp_path / "cand.yaml", CANDIDATE)), "--baseline-config",
                str(write_yaml(tmp_path / "base.yaml", BASELINE)), "--gpus", "0", "--seeds", "2", "--seed-base", "1",
                "--budget-s", "60", "--min-lead-bpb", str(margin), *corpus_args(tiny_corpus), "--out", str(out)])
    assert code == 0
    data = json.loads((out / "rerun.json").read_text())
    expected = welch_one_sided(per["candidate"], per["baseline"], margin=margin)
    lead = data["welch"]["val_bpb_lead"]
    assert lead["margin"] == margin and lead["p_value"] == expected.p_value and lead["t"] == expected.t
    # A lead above a positive margin is never likelier than a lead above zero.
    assert lead["p_value"] > data["welch"]["val_bpb"]["p_value"]
    assert f"val_bpb lead above {margin:g}: one-sided Welch t={expected.t:.3f}" in (out / "rerun.md").read_text()
    # Without the option the test is absent, not a copy of the plain one.
    result = rerun(from_dict(CANDIDATE), from_dict(BASELINE), [1, 2], 0, 60.0, tiny_corpus["data"],
                   tiny_corpus["tokenizer"], out, name="tiny", terminal=None)
    assert result.comparison.val_bpb_lead is None
    assert "val_bpb_lead" not in json.loads((out / "rerun.json").read_text())["welch"]
    capsys.readouterr()
    assert cli(["tiny", "--config", str(tmp_path / "cand.yaml"), "--gpus", "0", "--min-lead-bpb", "-0.01",
                *corpus_args(tiny_corpus), "--out", str(out)]) == 2
    assert "--min-lead-bpb -0.01" in capsys.readouterr().err


def test_runs_from_two_kinds_of_device_give_no_test(finished, tiny_corpus, tmp_path):
    """A kept run carried from a machine with another GPU: every figure is still written, but no Welch test, since
    in one wallclock budget a faster chip trains more steps (BENCHMARKS.md, Chip differences)."""
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    carried = out / "candidate" / "seed1" / "metrics.json"
    metrics = json.loads(carried.read_text())
    metrics["device"] = "NVIDIA H200"
    carried.write_text(json.dumps(metrics))
    terminal = io.StringIO()
    result = rerun(from_dict(CANDIDATE), from_dict(BASELINE), [1, 2], 0, 60.0, tiny_corpus["data"],
                   tiny_corpus["tokenizer"], out, name="tiny", terminal=terminal)

    assert not any(r.trained_now for res in (result.candidate, result.baseline) for r in res.runs)
    assert result.comparison is None
    data = json.loads((out / "rerun.json").read_text())
    assert data["welch"] is None and data["record_criterion"] is None
    note = next(n for n in data["notes"] if "kinds of device" in n)
    assert "NVIDIA H200: candidate seed 1" in note and "cpu: candidate seed 2, baseline seed 1, baseline seed 2" in note
    assert note in terminal.getvalue()
    # The seed means are still there, and the step times are split by device instead of labelled by one of them.
    assert data["candidate"]["val_bpb"]["n"] == 2
    assert {(s["label"], s["device"], s["runs"]) for s in data["step_time"]} == {
        ("candidate", "NVIDIA H200", 1), ("candidate", "cpu", 1), ("baseline", "cpu", 2)}
    md = (out / "rerun.md").read_text()
    assert "No test: the runs trained on different devices" in md and f"Note: {note}" in md

    # Put back, the same runs give the test again.
    metrics["device"] = "cpu"
    carried.write_text(json.dumps(metrics))
    again = rerun(from_dict(CANDIDATE), from_dict(BASELINE), [1, 2], 0, 60.0, tiny_corpus["data"],
                  tiny_corpus["tokenizer"], out, name="tiny", terminal=None)
    assert again.comparison is not None and not any("kinds of device" in n for n in again.notes)


def test_cpu_procs_two_runs_ddp(tiny_corpus, tmp_path):
    result = rerun(from_dict(CANDIDATE), None, [7], 0, 60.0, tiny_corpus["data"], tiny_corpus["tokenizer"],
                   tmp_path / "out", name="ddp", cpu_procs=2, terminal=None)
    metrics = metrics_of(tmp_path / "out" / "candidate" / "seed7")
    assert metrics["world_size"] == 2
    assert result.step_times[0].world_size == 2 and result.comparison is None
    assert json.loads(result.json_path.read_text())["ranks"] == 2
    assert (result.record_dir / "submission.json").is_file()


def test_bad_config_paths_are_one_clear_line(tiny_corpus, tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert cli(["tiny", "--config", str(missing), "--gpus", "0", *corpus_args(tiny_corpus)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such config file" in err and "Traceback" not in err
    cand = write_yaml(tmp_path / "cand.yaml", CANDIDATE)
    assert cli(["tiny", "--config", str(cand), "--baseline-config", str(missing), "--gpus", "0",
                *corpus_args(tiny_corpus), "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert cli(["tiny", "--config", str(cand), "--gpus", "0", "--data", str(tmp_path / "nodata"),
                "--tokenizer", str(tiny_corpus["tokenizer"]), "--out", str(tmp_path / "out")]) == 2
    assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing launched
    with pytest.raises(SystemExit) as exc:
        cli(["--help"])
    assert exc.value.code == 0 and "--trial" in capsys.readouterr().out


def make_search(storage: Path, corpus: dict) -> SearchSettings:
    """A search folder as `python -m search run` leaves it: search.json and an Optuna study of finished trials."""
    from search.tune.searcher import open_study
    from search.vocabulary import COMPLETE, INFEASIBLE_MEASURED, PRUNED

    settings = SearchSettings(name="tinysearch", space=str(storage / "space.yaml"), storage=str(storage),
                              data_dir=str(corpus["data"]), tokenizer=str(corpus["tokenizer"]), gpus_per_trial=0.0,
                              budget_s=2.0).validate()
    store.save_settings(settings)
    study = open_study(settings)
    C = optuna.trial.TrialState.COMPLETE
    rows = [  # (state, status, val_bpb, artifact_bytes, unique_blocks)
        (C, COMPLETE, 3.9, 70_000, 2),
        (C, COMPLETE, 3.7, 60_000, 1),  # the best feasible finished trial
        (C, INFEASIBLE_MEASURED, 3.1, 17_000_000, 2),  # better, but over the limit
        (optuna.trial.TrialState.PRUNED, PRUNED, None, None, 2),  # stopped early with a good rung
    ]
    for i, (state, status, bpb, size, blocks) in enumerate(rows):
        cfg = {**CANDIDATE, "model": {**TINY_MODEL, "unique_blocks": blocks}}
        attrs = {"status": status, "reason": "", "run_config": from_dict(cfg).to_dict(), "summary": f"u{blocks}",
                 "tune_trial_id": f"t{i:03d}"}
        attrs.update({k: v for k, v in (("val_bpb", bpb), ("artifact_bytes", size)) if v is not None})
        study.add_trial(optuna.trial.create_trial(state=state, value=bpb, user_attrs=attrs,
                                                  intermediate_values={} if bpb else {500: 2.5}))
    return settings


def test_best_and_given_trial_lookup(tiny_corpus, tmp_path, capsys):
    storage = tmp_path / "runs"
    make_search(storage, tiny_corpus)
    best = best_trial("tinysearch", str(storage))
    assert (best.number, best.val_bpb, best.config.model.unique_blocks) == (1, 3.7, 1)
    assert trial_by_id("tinysearch", "0", str(storage)).config.model.unique_blocks == 2
    assert trial_by_id("tinysearch", "t003", str(storage)).status == "pruned"
    with pytest.raises(RerunError, match="no trial '9'"):
        trial_by_id("tinysearch", "9", str(storage))
    assert cli(["nosuch", "--best", "--storage", str(storage)]) == 2
    assert "existing searches: tinysearch" in capsys.readouterr().err


def test_no_feasible_trial_says_what_to_do(tiny_corpus, tmp_path, capsys):
    from search.tune.searcher import open_study

    storage = tmp_path / "runs"
    settings = SearchSettings(name="empty", space="x.yaml", storage=str(storage), data_dir=str(tiny_corpus["data"]),
                              tokenizer=str(tiny_corpus["tokenizer"])).validate()
    store.save_settings(settings)
    open_study(settings)
    assert cli(["empty", "--storage", str(storage), "--gpus", "0"]) == 2
    err = capsys.readouterr().err
    assert "no feasible finished trial" in err and "--trial ID" in err


def test_best_trial_rerun_end_to_end(tiny_corpus, tmp_path):
    storage = tmp_path / "runs"
    settings = make_search(storage, tiny_corpus)
    # No --data/--tokenizer: the search's own are used; out goes under the search folder.
    assert cli(["tinysearch", "--best", "--no-baseline", "--seeds", "1", "--gpus", "0", "--budget-s", "60",
                "--storage", str(storage)]) == 0
    out = store.search_dir(settings) / "rerun_trial1"
    data = json.loads((out / "rerun.json").read_text())
    assert data["source"]["trial"] == 1 and data["baseline"] is None and data["welch"] is None
    metrics = metrics_of(out / "candidate" / "seed1337")
    assert metrics["config"]["model"]["unique_blocks"] == 1 and metrics["config"]["train"]["budget_s"] == 60.0
    assert (out / "record" / "README.md").is_file()


def test_parallel_runs_train_side_by_side(tiny_corpus, tmp_path):
    out = tmp_path / "out"
    result = rerun(from_dict(CANDIDATE), from_dict(BASELINE), [3], 0, 60.0, tiny_corpus["data"],
                   tiny_corpus["tokenizer"], out, name="par", parallel=2, terminal=None)
    cand, base = result.candidate.runs[0], result.baseline.runs[0]
    # Both runs of the seed were in flight at once: each started before the other finished.
    assert cand.started_at < base.finished_at and base.started_at < cand.finished_at
    assert metrics_of(out / "candidate" / "seed3")["config"]["model"]["virtual_layers"] == [0, 0]
    assert metrics_of(out / "baseline" / "seed3")["config"]["model"]["unique_blocks"] == 2
    data = json.loads(result.json_path.read_text())
    assert data["parallel"] == 2 and data["candidate"]["runs"][0]["started_at"] == cand.started_at


def test_runs_sharing_a_device_take_turns_and_say_so(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the runs' device lease, apart from any other test's
    out = tmp_path / "out"
    result = rerun(from_dict(CANDIDATE), from_dict(BASELINE), [3], 0, 60.0, tiny_corpus["data"],
                   tiny_corpus["tokenizer"], out, name="turns", runs_per_gpu=2, terminal=None)
    for label in ("candidate", "baseline"):
        log = (out / label / "seed3" / "train.log").read_text()
        assert "s for the device (" in log and "handed the device on" in log, log
    data = json.loads(result.json_path.read_text())
    assert data["runs_per_gpu"] == 2 and data["slots"] == ["", ""]
    assert "2 per device taking turns to train" in result.md_path.read_text()


def test_a_shared_device_launch_doubles_the_slots_and_passes_share_device(tmp_path):
    from search.rerun.run import launch_command, plan_launch

    launch = plan_launch(0, runs_per_gpu=2)
    assert launch.share_device and launch.slots == ("", "") and launch.device == "cpu"
    assert launch_command(tmp_path / "c.yaml", tmp_path, tmp_path, tmp_path / "t.model", launch)[-1] == "--share-device"
    assert "--share-device" not in launch_command(tmp_path / "c.yaml", tmp_path, tmp_path, tmp_path / "t.model",
                                                  plan_launch(0))
    with pytest.raises(RerunError, match="--runs-per-gpu 2 shares one device per run: use it with --gpus 1"):
        plan_launch(0, cpu_procs=2, runs_per_gpu=2)
    with pytest.raises(RerunError, match="--runs-per-gpu 0: pass 1"):
        plan_launch(0, runs_per_gpu=0)


def test_gpu_slots_are_disjoint_groups_of_the_visible_gpus():
    from search.rerun.run import gpu_slots

    assert gpu_slots(1, 2, 2, visible="") == ("0", "1")
    assert gpu_slots(2, 2, 4, visible="") == ("0,1", "2,3")
    assert gpu_slots(1, 2, 2, visible="4,6") == ("4", "6")  # indices of the parent's own visible set
    assert gpu_slots(2, 1, 2, visible="") == ("",)  # the whole node: environment left as it is
    assert gpu_slots(1, 1, 2, visible="") == ("0",)


def test_parallel_needing_more_gpus_than_the_node_has_is_refused(tiny_corpus, tmp_path):
    from search.rerun.cli import default_gpus

    with pytest.raises(RerunError, match="--parallel 3: this node has 2 GPU"):
        default_gpus(2, 3)
    assert default_gpus(4, 2) == 2 and default_gpus(0, 2) == 0
    with pytest.raises(RerunError, match="--parallel 0: .*parallel >= 1"):
        rerun(from_dict(CANDIDATE), None, [1], 0, 60.0, tiny_corpus["data"], tiny_corpus["tokenizer"],
              tmp_path / "o", parallel=0, terminal=None)


def test_the_baseline_trains_with_the_candidates_train_settings(tiny_corpus, tmp_path, capsys):
    # The candidate carries a search's overrides (here: another warmdown and LR); the baseline file has its own.
    cand_train = {**TRAIN, "warmdown_steps": 3, "matrix_lr": 0.03}
    cand = write_yaml(tmp_path / "cand.yaml", {**CANDIDATE, "train": cand_train})
    base = write_yaml(tmp_path / "base.yaml", BASELINE)
    common = ["tiny", "--config", str(cand), "--baseline-config", str(base), "--gpus", "0", "--seeds", "1",
              "--budget-s", "60", *corpus_args(tiny_corpus)]
    assert cli([*common, "--out", str(tmp_path / "same")]) == 0
    out = capsys.readouterr().out
    assert "both configs train with: " in out and "warmdown_steps=3" in out and "matrix_lr=0.03" in out
    same = {label: metrics_of(tmp_path / "same" / label / "seed1337")["config"] for label in ("candidate", "baseline")}
    assert same["baseline"]["train"] == same["candidate"]["train"]
    assert same["baseline"]["model"] == from_dict(BASELINE).to_dict()["model"]  # the shape stays the baseline's

    assert cli([*common, "--baseline-own-train", "--out", str(tmp_path / "own")]) == 0
    own = metrics_of(tmp_path / "own" / "baseline" / "seed1337")["config"]["train"]
    assert own["warmdown_steps"] == TRAIN["warmdown_steps"] and own["matrix_lr"] != 0.03


def test_seed_config_drops_the_search_reports():
    from search.rerun.run import seed_config
    from search.rerun.cli import train_differences

    # A trial's config recorded by a search from before the report times left the run config.
    searched = from_dict({"train": {"report_at_s": [20, 60], "report_every_s": 30.0, "matrix_lr": 0.03}})
    cfg = seed_config(searched, seed=7, budget_s=120)
    assert "report_at_s" not in cfg.to_dict()["train"] and cfg.train.seed == 7 and cfg.train.budget_s == 120
    assert train_differences(searched) == "matrix_lr=0.03"  # report times are the search's, not the recipe


def test_widest_bits_exports_both_configs_at_the_most_bits_that_fit(tiny_corpus, tmp_path, capsys):
    # Both tiny configs at int5 fit at int8. Without --widest-bits they export at int5 and the rerun says what that
    # costs; with it both train the same and export at int8, and rerun.json records the changes.
    int5 = {"quant_bits": 5}
    cand = write_yaml(tmp_path / "cand.yaml", {**CANDIDATE, "export": int5})
    base = write_yaml(tmp_path / "base.yaml", {**BASELINE, "export": int5})
    common = ["tiny", "--config", str(cand), "--baseline-config", str(base), "--gpus", "0", "--seeds", "1",
              "--budget-s", "60", *corpus_args(tiny_corpus)]
    assert cli([*common, "--out", str(tmp_path / "narrow")]) == 0
    notes = json.loads((tmp_path / "narrow" / "rerun.json").read_text())["notes"]
    for label in ("candidate", "baseline"):
        assert any(n.startswith(f"the {label} exports at int5, but the size model predicts int8 fits") for n in notes)
    assert "pass --widest-bits" in (tmp_path / "narrow" / "rerun.md").read_text()

    out = tmp_path / "wide"
    assert cli([*common, "--widest-bits", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the candidate exports at int8 (it had int5)" in printed
    assert "the baseline exports at int8 (it had int5)" in printed
    assert "the candidate exports its embedding at float16" in printed  # tiny: room for it at int8 too
    for label in ("candidate", "baseline"):
        export = metrics_of(out / label / "seed1337")["config"]["export"]
        assert (export["quant_bits"], export["embedding_bits"]) == (8, 16)
    data = json.loads((out / "rerun.json").read_text())
    assert (data["source"]["quant_bits_from"], data["source"]["quant_bits"]) == (5, 8)
    assert (data["source"]["baseline_quant_bits_from"], data["source"]["baseline_quant_bits"]) == (5, 8)
    assert (data["source"]["embedding_bits_from"], data["source"]["embedding_bits"]) == (0, 16)
    assert not any("size model predicts" in n for n in data["notes"])


def test_narrow_export_notes_name_only_configs_below_their_widest_fitting_bits():
    from search.rerun.run import narrow_export_notes

    loop = {"model": {"unique_blocks": 11, "virtual_layers": [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]},
            "export": {"quant_bits": 6}}  # int8 is predicted over 16,000,000 bytes, a float16 embedding under
    loop_int6, loop_emb16 = from_dict(loop), from_dict({**loop, "export": {"quant_bits": 6, "embedding_bits": 16}})
    small_int6 = from_dict({"model": {"unique_blocks": 3}, "export": {"quant_bits": 6}})
    baseline_int8 = from_dict({"export": {"quant_bits": 8}})  # 9 x 512: a float16 embedding is predicted over
    assert narrow_export_notes([("candidate", loop_emb16), ("baseline", baseline_int8)]) == []
    (note,) = narrow_export_notes([("candidate", loop_emb16), ("baseline", small_int6)])
    assert note.startswith("the baseline exports at int6, but the size model predicts int8 fits")
    (note,) = narrow_export_notes([("candidate", loop_int6), ("baseline", baseline_int8)])
    assert note.startswith("the candidate exports its embedding at int6, but the size model predicts float16 fits")


def test_widest_bits_with_nothing_that_fits_is_one_clear_line(tiny_corpus, tmp_path, capsys):
    cand = write_yaml(tmp_path / "cand.yaml", {**CANDIDATE, "export": {"limit_bytes": 1000}})
    assert cli(["tiny", "--config", str(cand), "--gpus", "0", "--seeds", "1", "--widest-bits", "--no-baseline",
                "--out", str(tmp_path / "out"), *corpus_args(tiny_corpus)]) == 2
    err = capsys.readouterr().err
    assert "--widest-bits" in err and "1,000 bytes at every quantization" in err and "drop --widest-bits" in err
    assert not (tmp_path / "out").exists()  # refused before anything trained


def test_kept_runs_without_their_artifact_still_give_the_comparison(finished, tiny_corpus, tmp_path):
    """Runs carried from another machine without model.ptz: the record folder takes another seed's artifact, and
    with none left the comparison is still written, without the folder."""
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    (out / "candidate" / "seed1" / "model.ptz").unlink()
    result = rerun(from_dict(CANDIDATE), from_dict(BASELINE), [1, 2], 1, 60.0, tiny_corpus["data"],
                   tiny_corpus["tokenizer"], out, name="tiny", terminal=io.StringIO())
    assert result.record_dir is not None
    assert json.loads((result.record_dir / "submission.json").read_text())["artifact_seed"] == 2

    (out / "candidate" / "seed2" / "model.ptz").unlink()
    terminal = io.StringIO()
    # --gpus 1 on a machine without CUDA falls back to the CPU, but nothing trains: no note may say the kept runs
    # ran on the CPU.
    result = rerun(from_dict(CANDIDATE), from_dict(BASELINE), [1, 2], 1, 60.0, tiny_corpus["data"],
                   tiny_corpus["tokenizer"], out, name="tiny", terminal=terminal)
    assert not any(r.trained_now for res in (result.candidate, result.baseline) for r in res.runs)
    assert not any("ran on the CPU" in n for n in result.notes)
    data = json.loads((out / "rerun.json").read_text())
    assert data["record_dir"] is None and not (out / "record").exists()
    assert data["welch"]["val_bpb"]["p_value"] == json.loads(
        (finished["out"] / "rerun.json").read_text())["welch"]["val_bpb"]["p_value"]
    assert any("model.ptz" in n and "no submission folder" in n for n in data["notes"])
    md = (out / "rerun.md").read_text()
    assert "no submission folder" in terminal.getvalue() and "Submission folder" not in md
    assert "every run kept from an earlier call" in md and "rank(s) on" not in md


def test_a_damaged_kept_run_is_named_and_never_read_as_other_numbers(tiny_corpus, tmp_path):
    """A metrics.json cut short (a full disk, a copy killed half-way) stops the rerun with the run and the fix,
    before anything is launched; the folder is left as it was."""
    from search.rerun.run import Launch, seed_config, train_seed

    run_dir = tmp_path / "out" / "candidate" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"val_bpb": 1.2, "val_lo')
    with pytest.raises(RerunError, match=r"candidate seed 1: .*metrics.json: not readable JSON.*Delete .*seed1"):
        train_seed("candidate", seed_config(from_dict(CANDIDATE), 1, 60.0), run_dir, tiny_corpus["data"],
                   tiny_corpus["tokenizer"], Launch(1, "cpu"), terminal=None)
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.json"]
