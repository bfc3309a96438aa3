"""One search trial: the trainer under Ray Tune, reporting rungs with checkpoints and the final metrics.

G <= 1 GPU: a function trainable that calls the trainer in-process; Tune may run consecutive trials in one warm
worker process (reuse_actors, see reuses_workers), so each trial starts by clearing what the last one left.
With --trials-per-gpu N > 1 such trials share a GPU and take turns to train (search.tune.lease). Each writes
run/device_time.json for the report's device-use table (search.analysis.device_use).
G > 1 GPUs: the same function launches a Ray Train TorchTrainer with G workers (DDP); the trainer joins
the process group Ray Train set up, and TuneReportCallback forwards rank 0's reports to Tune.
"""
from __future__ import annotations

import gc
import inspect
import math
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

import ray
import torch
from ray import tune

from search.analysis import device_use

from search import store
from search.tune.lease import DeviceLease, device_key
from search.tune.rungs import RungPlan, TrialHooks
from search.tune.searcher import import_object
from search.vocabulary import FAIL_REASON_KEY, FAILED_KEY, FINAL_KEY, NUMBER_KEY, WORKER_TRIAL
from search.settings import SearchSettings, is_uri
from trainer.device_lease import hand_on, take_turn
from trainer.hooks import SaveCheckpoint, StopRequested
from trainer.tensorboard_log import TrainingCurves

# Final-report keys renamed so ASHA (time_attr=train_s) never mistakes the final full-val result for a rung.
FINAL_RENAMES = {"train_s": "final_train_s"}
# Final metrics that do not go to Tune (the run config is already in the trial's config).
DROP_FINAL = {"config", "metrics_version"}
# Every report names the Ray node it came from, so a trial retried after a lost node shows where each rung ran.
NODE_KEY = "node_id"

_trials_in_process = 0


def failure_reason(exc: BaseException) -> str:
    """Short, specific reason for the report: divergence, OOM, bad config, or the exception."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if name == "TrainingDiverged":
        return f"diverged: {text}"
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return f"out of memory: {text}"
    if name in ("ConfigError", "SizeLimitError"):
        return f"bad config: {text}"
    return f"{name}: {text}"


def node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray, e.g. when run_training is called directly)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _clean(metrics: dict) -> dict:
    """JSON-friendly scalars only (Tune stores results as JSON lines)."""
    out = {}
    for k, v in metrics.items():
        if k in DROP_FINAL:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
    return out


def run_training(
    config: dict,
    settings: SearchSettings,
    report_fn: Callable[[dict, Path | None], None],
    resume_dir: Path | None,
    out_dir: Path,
    is_main: bool = True,
    should_stop: Callable[[], bool] | None = None,
    before_training: Callable[[], None] | None = None,
    after_device: Callable[[], None] | None = None,
) -> None:
    """Train one config, sending each rung (with a checkpoint dir) and the final metrics to report_fn;
    before_training runs just before the timed training (once compiled, where train_fn takes hooks) and
    after_device once the run needs its device no more (after the final evaluations)."""
    from trainer.run_config import from_dict

    number = config[NUMBER_KEY]
    curves: TrainingCurves | None = None
    try:
        # In the trial's folder (run/'s parent), beside Tune's own event file: TensorBoard shows one run per trial.
        curves = TrainingCurves.open_or_skip(out_dir.parent, resumed=resume_dir is not None) if is_main else None
        cfg = from_dict(config["run"], where=f"trial {number}")
        train_fn = import_object(settings.train_fn)

        def send(metrics: dict, save_checkpoint: SaveCheckpoint) -> None:
            if curves is not None:  # before reporting: ASHA's stop reaches the trial inside report_fn
                curves.log_scores("rung", metrics["step"], {"val_bpb": metrics["val_bpb"]})
            with tempfile.TemporaryDirectory(prefix="rung_") as d:
                save_checkpoint(Path(d))  # every rank writes its own state file
                report_fn({**_clean(metrics), NUMBER_KEY: number, NODE_KEY: node_id()}, Path(d) if is_main else None)

        params = inspect.signature(train_fn).parameters
        kwargs: dict[str, Any] = {"resume_from": resume_dir}
        if "echo" in params:
            kwargs["echo"] = False  # train.log in the trial folder has the lines; keep the driver terminal readable
        if "hooks" in params:
            kwargs["hooks"] = TrialHooks(RungPlan.from_settings(settings), send, should_stop, before_training, curves,
                                         after_device)
        elif before_training is not None:  # a train_fn without hooks: take the turn before it starts at all
            before_training()
        final = train_fn(cfg, Path(settings.data_dir), Path(settings.tokenizer), out_dir, **kwargs)
        if curves is not None:
            curves.log_final(final)
    except StopRequested:  # Tune ended the trial (ASHA): it already knows; nothing to report
        return
    except Exception as exc:  # a failed trial is a result, not a crash of the search
        reason = failure_reason(exc)
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "failure.txt").write_text(reason + "\n\n" + traceback.format_exc())
        report_fn({FAILED_KEY: True, FAIL_REASON_KEY: reason, NUMBER_KEY: number}, None)
        return
    finally:
        if curves is not None:  # its writer thread ends here, also in a worker that runs the next trial
            curves.close()
    final = {FINAL_RENAMES.get(k, k): v for k, v in _clean(final.to_dict()).items()}
    report_fn({**final, FINAL_KEY: True, NUMBER_KEY: number, NODE_KEY: node_id()}, None)


def _tune_report(metrics: dict, checkpoint_dir: Path | None) -> None:
    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)


def ddp_workers(settings: SearchSettings) -> tuple[int, bool]:
    """(DDP worker count, on GPUs): G GPU workers for G > 1; extra['cpu_ddp_workers'] runs DDP on CPUs (tests)."""
    cpu_workers = int(settings.extra.get("cpu_ddp_workers", 0))
    if cpu_workers > 1:
        return cpu_workers, False
    return (int(settings.gpus_per_trial), True) if settings.gpus_per_trial > 1 else (1, settings.gpus_per_trial > 0)


def tune_stop_requested() -> bool:
    """True once Tune has asked this trial's function to end (ASHA stopped it, or the driver stopped)."""
    # The flag lives only on Ray's internal session object; without it the trial just runs to its next report.
    from search.tune.private_api import get_session

    session = get_session()
    return bool(session is not None and getattr(session, "stop_event", None) is not None
                and session.stop_event.is_set())


def reuses_workers(settings: SearchSettings) -> bool:
    """Whether Tune may run consecutive trials in one warm worker process (TuneConfig reuse_actors)."""
    # Single-process trials on local storage only: there run_dir is the storage folder itself. With a cloud
    # URI a trial's run/ lives in Tune's trial dir, which a reused worker would never upload (see run_dir).
    return ddp_workers(settings)[0] <= 1 and not is_uri(settings.storage)


def run_dir(settings: SearchSettings) -> Path:
    """The trial's run/ folder (train.log, model.ptz, metrics.json), inside its trial folder in storage."""
    trial_dir = Path(tune.get_context().get_trial_dir())
    if is_uri(settings.storage):
        return trial_dir / "run"  # a fresh worker's trial dir: the driver uploads it with the experiment state
    # Tune's trial dir is a staging folder under the Ray session: a fresh worker gets the driver's one
    # (driver_artifacts/, uploaded to storage), a reused worker its working dir (working_dirs/, uploaded only
    # with SyncConfig(sync_artifacts=True)); so reused trials lost run/. Local storage is shared by every node
    # (Ray requires it for checkpoints), so the trial writes there directly, whichever worker runs it.
    return Path(store.experiment_path(settings)) / trial_dir.name / "run"


def start_clean() -> int:
    """Count this trial in its worker process; in a reused process, drop what the previous trial left."""
    global _trials_in_process
    _trials_in_process += 1
    if _trials_in_process > 1:
        gc.collect()  # the previous trial's model and optimizers, freed when Tune ended its thread
        if "torch._dynamo" in sys.modules:  # something compiled here (importing it just to reset costs ~1 s)
            # Its graphs would count against the recompile limit of the code every model shares (past it
            # dynamo falls back to eager), and hold memory.
            torch._dynamo.reset()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # cached blocks sized for the previous model
    return _trials_in_process


@contextmanager
def frames_released_on_exit():
    """Drop the locals of the frames an exception leaves through, so memory can be freed before it is handled."""
    # ASHA's stop reaches a trial as SystemExit raised inside tune.report, in the middle of the training loop.
    # While that exception is in flight its traceback keeps the trainer's frames, and with them the model,
    # optimizer state and the rung's copies, alive: the `finally` below could not free their GPU memory before
    # handing the turn on (on an H100 a pruned trial still held 48.5 GiB, and the next trial's warm-up ran out).
    try:
        yield
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise


def trial_function(config: dict, settings: SearchSettings) -> None:
    """Tune function trainable: resume from Tune's checkpoint if any, train (taking turns on a shared GPU), report."""
    if ddp_workers(settings)[0] > 1:
        _ddp_trial(config, settings)
        return
    worker_trial = start_clean()
    out_dir, device = run_dir(settings), device_key()
    lease = DeviceLease(device) if settings.trials_per_gpu > 1 else None
    clock = {"started_at": time.time(), "acquired_at": None, "released_at": None, "train_s": 0.0, "wait_s": 0.0}

    def record_device_time(**extra) -> None:
        device_use.write_entry(out_dir, device=device, worker_trial=worker_trial,
                               trials_per_gpu=settings.trials_per_gpu,
                               **{**clock, "released_at": clock["released_at"] or time.time()}, **extra)

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        clock["train_s"] = metrics.get("final_train_s", metrics.get("train_s", clock["train_s"]))
        if clock["acquired_at"] is not None:
            # Up to this report, in case the process dies before `finally` (Tune tears down the last pruned
            # trial's worker as the search ends: a search's last trial lost its entry that way).
            record_device_time(provisional=True)
        _tune_report({**metrics, WORKER_TRIAL: worker_trial}, checkpoint_dir)

    if lease is not None and torch.cuda.is_available():
        # Until its turn a trial may use 1/N of the GPU's memory (a warm-up past it waits for the turn and warms
        # up again, TrialHooks.warm_up_failed), so the trial that holds the GPU keeps the rest.
        torch.cuda.set_per_process_memory_fraction(1 / settings.trials_per_gpu)

    def before_training() -> None:
        if lease is not None:
            clock["wait_s"] = take_turn(lease, should_stop=tune_stop_requested)
        clock["acquired_at"] = time.time()

    def give_back() -> None:
        if lease is not None and hand_on(lease):  # the turn and the GPU memory, to the next holder
            clock["released_at"] = time.time()

    checkpoint = tune.get_checkpoint()
    try:
        with frames_released_on_exit(), (checkpoint.as_directory() if checkpoint else nullcontext(None)) as resume:
            run_training(config, settings, report, Path(resume) if resume else None, out_dir,
                         should_stop=tune_stop_requested, before_training=before_training, after_device=give_back)
    finally:
        give_back()
        if clock["acquired_at"] is not None:  # it got as far as training
            record_device_time()


def _ddp_worker(loop_config: dict) -> None:
    """Ray Train worker loop: one DDP rank of the trainer."""
    import ray.train

    config, settings = loop_config["config"], loop_config["settings"]
    ctx = ray.train.get_context()
    is_main = ctx.get_world_rank() == 0

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)  # every rank reports; rank 0 carries the checkpoint

    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else nullcontext(None)) as resume:
        run_training(config, settings, report, Path(resume) if resume else None,
                     Path(loop_config["out_dir"]), is_main=is_main)


def _ddp_trial(config: dict, settings: SearchSettings) -> None:
    """Launch G DDP workers with Ray Train; a re-run of the same trial resumes its Train run's checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_dir = Path(tune.get_context().get_trial_dir())
    workers, use_gpu = ddp_workers(settings)
    per_worker = {"CPU": settings.cpus_per_trial, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={"config": config, "settings": settings, "out_dir": str(trial_dir / "run")},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name="ddp", storage_path=str(trial_dir),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
        ),
    )
    trainer.fit()


def make_trainable(settings: SearchSettings):
    """The Tune trainable with its resources: G GPUs in-process, or a light driver for G DDP workers."""
    fn = tune.with_parameters(trial_function, settings=settings)
    if ddp_workers(settings)[0] > 1:
        # The Train workers reserve the GPUs themselves; the Tune trial only coordinates them.
        return tune.with_resources(fn, {"CPU": 0.5})
    return tune.with_resources(fn, {"CPU": settings.cpus_per_trial, "GPU": settings.gpu_share})
