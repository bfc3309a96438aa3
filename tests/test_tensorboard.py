"""TensorBoard curves: `trainer train --tensorboard DIR` and a real local CPU search write event files whose scalars
are the train.log lines, the reports' val_bpb and the final scores; read back here record by record, CRCs checked."""
from __future__ import annotations

import json
import re
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

from search.analysis.report import load_study
from search.tune.trainable import run_training
from tests.search_fixtures import TINY_SPACE, run_local_search, tiny_settings, write_space
from trainer import cli, tensorboard_log
from trainer.hooks import StepLog
from trainer.tensorboard_log import FILENAME_SUFFIX, TrainingCurves
from trainer.trainer import STATE_FILE

LOG_LINE = re.compile(r"\] step (\d+) loss (\S+) train_s (\S+) step_ms \S+ tokens_per_s (\S+)$")
LOSS_TOLERANCE = 5e-5 + 1e-6  # train.log prints 4 decimals; the event file holds a float32


def read_records(path: Path, live: bool = False) -> list[bytes]:
    """The records of a TFRecord file (length, its masked CRC32C, data, its masked CRC32C), each CRC checked;
    live: the file is still being written, so its last record may be incomplete (it is left out)."""
    blob, records, at = path.read_bytes(), [], 0
    while at < len(blob):
        header = blob[at:at + 8]
        if live and (len(header) < 8 or len(blob) < at + 16 + struct.unpack("<Q", header)[0]):
            break
        (length,), (length_crc,) = struct.unpack("<Q", header), struct.unpack("<I", blob[at + 8:at + 12])
        data = blob[at + 12:at + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[at + 12 + length:at + 16 + length])
        assert length_crc == masked_crc32c(header) and data_crc == masked_crc32c(data), f"{path} damaged at {at}"
        records.append(data)
        at += 16 + length
    return records


def read_scalars(path: Path, live: bool = False) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] in the order written, from one event file (live: see read_records)."""
    return shown_by_tensorboard([path], live)


def shown_by_tensorboard(paths: list[Path], live: bool = False) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of a run's event files read in turn, as TensorBoard shows them: a restart (a
    SessionLog START at step s) hides what the run logged before it at steps >= s."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in paths:
        events = [Event.FromString(record) for record in read_records(path, live)]
        if live and not events:
            continue
        assert events[0].file_version == "brain.Event:2"
        for event in events[1:]:
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {tag: [(step, v) for step, v in points if step < event.step]
                           for tag, points in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def curves_file(folder: Path) -> Path:
    """The one event file of training curves in folder."""
    files = list(folder.glob(f"events.out.tfevents.*{FILENAME_SUFFIX}"))
    assert len(files) == 1, files
    return files[0]


def log_lines(train_log: Path) -> list[tuple[int, float, float, float]]:
    """(step, loss, train_s, tokens_per_s) of each training log line, as printed."""
    found = [LOG_LINE.search(line) for line in train_log.read_text().splitlines()]
    return [(int(m[1]), float(m[2]), float(m[3]), float(m[4].replace(",", ""))) for m in found if m]


def assert_matches_log(scalars: dict, lines: list) -> None:
    """Loss, training seconds and tokens/s at exactly the logged steps, equal to the printed figures."""
    assert [step for step, _ in scalars["train/loss"]] == [line[0] for line in lines] and lines
    for tag, column, tolerance in (("train/loss", 1, LOSS_TOLERANCE), ("train/train_s", 2, 0.05 + 1e-6)):
        for (step, value), line in zip(scalars[tag], lines):
            assert step == line[0] and value == pytest.approx(line[column], abs=tolerance), (tag, step)
    for (step, tokens_per_s), line in zip(scalars["train/tokens_per_s"], lines):
        assert step == line[0] and tokens_per_s == pytest.approx(line[3], abs=0.5 + 1e-6 * line[3])


def test_trainer_train_writes_the_curves_of_its_log_lines(tiny_corpus, tiny_config_dict, tmp_path, capsys):
    tiny_config_dict["train"].update(max_steps=12, budget_s=300.0, warmdown_steps=4, log_every_steps=2,
                                     eval_stride=8)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    out, curves = tmp_path / "out", tmp_path / "tb"
    code = cli.main(["train", "--config", str(config), "--data", str(tiny_corpus["data"]), "--tokenizer",
                     str(tiny_corpus["tokenizer"]), "--device", "cpu", "--out", str(out), "--tensorboard", str(curves)])
    assert code == 0, capsys.readouterr().err
    scalars = read_scalars(curves_file(curves))
    lines = log_lines(out / "train.log")
    assert [line[0] for line in lines] == [1, 2, 4, 6, 8, 10, 12]
    assert_matches_log(scalars, lines)
    batch_tokens = tiny_config_dict["train"]["batch_tokens"]
    for (step, tokens_per_s), (_, train_s) in zip(scalars["train/tokens_per_s"], scalars["train/train_s"]):
        assert tokens_per_s == pytest.approx(step * batch_tokens / train_s, rel=1e-5)
    # Step k's LR scale is the warmdown's over the last 4 of 12 steps (the 300 s budget never binds): 1 until
    # step 9, then (12 - (k - 1)) / 4.
    assert scalars["train/lr_scale"] == [(k, min(1.0, (12 - (k - 1)) / 4)) for k in (1, 2, 4, 6, 8, 10, 12)]
    metrics = json.loads((out / "metrics.json").read_text())
    finals = ("val_bpb", "val_bpb_sliding", "val_bpb_prequant")  # no train.average: no val_bpb_prequant_raw
    assert metrics["val_bpb_prequant_raw"] is None
    for name in finals:
        [(step, value)] = scalars[f"final/{name}"]
        assert step == metrics["steps"] == 12 and value == pytest.approx(metrics[name], rel=1e-6)
    assert set(scalars) == {"train/loss", "train/lr_scale", "train/tokens_per_s", "train/train_s",
                            *(f"final/{name}" for name in finals)}


def test_curves_reach_the_file_while_the_writer_is_open(tmp_path):
    curves = TrainingCurves(tmp_path)
    try:
        curves.log_step(StepLog(step=7, loss=2.5, lr_scale=0.5, train_s=1.25, tokens_per_s=4096.0))
        deadline = time.monotonic() + 10  # the writer writes every FLUSH_S = 1 s
        while len(read_scalars(curves_file(tmp_path), live=True)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_scalars(curves_file(tmp_path), live=True) == {
            "train/loss": [(7, 2.5)], "train/lr_scale": [(7, 0.5)], "train/train_s": [(7, 1.25)],
            "train/tokens_per_s": [(7, 4096.0)]}
    finally:
        curves.close()


def test_without_tensorboardx_train_refuses_in_one_line_and_a_trial_goes_on(tiny_corpus, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # how Python marks a module that cannot be imported
    out, curves = tmp_path / "out", tmp_path / "tb"
    code = cli.main(["train", "--smoke", "--data", str(tiny_corpus["data"]), "--tokenizer",
                     str(tiny_corpus["tokenizer"]), "--out", str(out), "--tensorboard", str(curves)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --tensorboard: the tensorboardX package is not installed") and "pip install" in err
    assert not out.exists() and not curves.exists()  # refused before anything ran
    # A search's trial trains without curves, saying so once per worker process.
    monkeypatch.setattr(tensorboard_log, "_told_missing", False)
    assert TrainingCurves.open_or_skip(curves) is None and TrainingCurves.open_or_skip(curves) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("no TensorBoard curves: the tensorboardX package")
    assert not curves.exists()


@pytest.fixture(scope="module")
def curves_search(tmp_path_factory, tiny_corpus):
    """A 3-trial local CPU search whose trials log every 3 steps."""
    root = tmp_path_factory.mktemp("tensorboard_search")
    space = {**TINY_SPACE, "base": {**TINY_SPACE["base"], "train": {**TINY_SPACE["base"]["train"],
                                                                    "log_every_steps": 3}}}
    settings = tiny_settings(root / "runs", tiny_corpus, write_space(root, space), "curves", trials=3)
    return run_local_search(settings)


def test_a_search_writes_one_run_per_trial_with_its_log_lines_and_rungs(curves_search):
    settings = curves_search
    search_dir = Path(settings.storage, settings.name)
    trials = {t.number: t for t in load_study(settings).get_trials(deepcopy=False) if t.user_attrs.get("tune_trial_id")}
    folders = sorted(search_dir.glob("t[0-9]*_*"))
    assert len(folders) == len(trials) == 3
    # `tensorboard --logdir runs/NAME` shows one run per folder holding event files: one per trial, named by its
    # number (ours and Tune's own file share the trial's folder).
    run_folders = sorted({path.parent for path in search_dir.rglob("*tfevents*")})
    assert run_folders == folders
    statuses = set()
    for folder in folders:
        trial = trials[int(folder.name[1:5])]
        statuses.add(trial.user_attrs["status"])
        scalars = read_scalars(curves_file(folder))
        assert_matches_log(scalars, log_lines(folder / "run" / "train.log"))
        # Each rung's val_bpb at its step, as the trial reported it to Tune.
        results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
        rungs = [(r["step"], r["val_bpb"]) for r in results if not r.get("final") and not r.get("failed")]
        assert rungs and [step for step, _ in scalars["rung/val_bpb"]] == [step for step, _ in rungs]
        assert [v for _, v in scalars["rung/val_bpb"]] == pytest.approx([v for _, v in rungs], rel=1e-6)
        if trial.user_attrs["status"] == "complete":
            metrics = json.loads((folder / "run" / "metrics.json").read_text())
            [(step, value)] = scalars["final/val_bpb"]
            assert step == metrics["steps"] == scalars["train/loss"][-1][0]
            assert value == pytest.approx(metrics["val_bpb"], rel=1e-6)
        else:  # stopped at a rung: no final scores
            assert trial.user_attrs["status"] == "pruned" and "final/val_bpb" not in scalars
    assert "complete" in statuses


def test_without_tensorboardx_a_trial_trains_and_reports_all_the_same(curves_search, tmp_path, monkeypatch, capsys):
    settings = curves_search
    trial = next(t for t in load_study(settings).get_trials(deepcopy=False) if t.user_attrs.get("status") == "complete")
    config = {"run": json.loads(json.dumps(trial.user_attrs["run_config"])), "optuna_number": 99}
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setattr(tensorboard_log, "_told_missing", False)
    reports = []
    run_training(config, settings, lambda metrics, checkpoint: reports.append(metrics), None, tmp_path / "t" / "run")
    # Rungs come at training seconds, so how many precede the final report depends on the machine's load.
    assert reports and [r["optuna_number"] for r in reports] == [99] * len(reports)
    assert reports[-1]["final"] and not any(r.get("failed") for r in reports)
    assert json.loads((tmp_path / "t" / "run" / "metrics.json").read_text())["val_bpb"] == reports[-1]["val_bpb"]
    assert not list(tmp_path.rglob("*tfevents*"))
    assert capsys.readouterr().err.count("no TensorBoard curves: the tensorboardX package is not installed") == 1


def test_a_resumed_trial_hides_the_figures_it_logs_anew(curves_search, tmp_path):
    settings = curves_search
    study = {t.number: t for t in load_study(settings).get_trials(deepcopy=False) if t.user_attrs.get("tune_trial_id")}
    folder = next(f for f in sorted(Path(settings.storage, settings.name).glob("t[0-9]*_*"))
                  if study[int(f.name[1:5])].user_attrs["status"] == "complete")
    trial, checkpoint = study[int(folder.name[1:5])], folder / "checkpoint_000000"  # its first rung
    resumed_at = torch.load(checkpoint / STATE_FILE.format(rank=0), weights_only=True)["step"]
    before = read_scalars(curves_file(folder))
    assert before["train/loss"][-1][0] > resumed_at  # the first run logged past the checkpoint
    # The trial's folder as the interrupted run left it, then the trial resumed from its first rung.
    interrupted = tmp_path / folder.name
    interrupted.mkdir()
    shutil.copy(curves_file(folder), interrupted)
    config = {"run": json.loads(json.dumps(trial.user_attrs["run_config"])), "optuna_number": trial.number}
    reports = []
    run_training(config, settings, lambda metrics, checkpoint: reports.append(metrics), checkpoint,
                 interrupted / "run")
    assert reports[-1]["final"]
    files = sorted(interrupted.glob(f"events.out.tfevents.*{FILENAME_SUFFIX}"))
    assert len(files) == 2 and files[0].name == curves_file(folder).name
    resumed = read_scalars(files[1])
    [restart] = [Event.FromString(r) for r in read_records(files[1]) if Event.FromString(r).HasField("session_log")]
    # TensorBoard hides the first file's figures from the resumed run's first figure on: its first log line (at
    # the first log step after the checkpoint, or its last step), or a rung it reached sooner.
    assert restart.session_log.status == SessionLog.START
    assert restart.step == min(points[0][0] for points in resumed.values()) > resumed_at
    assert_matches_log(resumed, log_lines(interrupted / "run" / "train.log"))
    shown = shown_by_tensorboard(files)
    for tag in ("train/loss", "rung/val_bpb"):  # the resume may run out of budget before its next rung
        assert shown[tag] == [p for p in before[tag] if p[0] <= resumed_at] + resumed.get(tag, []), tag
    assert shown["final/val_bpb"] == resumed["final/val_bpb"] == [(reports[-1]["steps"], pytest.approx(
        reports[-1]["val_bpb"], rel=1e-6))]
