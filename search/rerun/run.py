"""Full-scale rerun: train a candidate and a baseline config over several seeds the same way, then compare.

Each (config, seed) run is one `python -m trainer train` under torchrun, DDP over G GPUs of the node
(or K gloo processes on the CPU), in out_dir/<candidate|baseline>/seed<S>/. With `parallel` P, P runs train
at once, each on its own G GPUs (CUDA_VISIBLE_DEVICES), so 3 seeds x 2 configs on a 2-GPU node take 3 waves. A run whose metrics.json
exists is kept and not retrained, so a crash or Ctrl-C loses only the run in flight. The comparison
(seed means and stds, step time per GPU count, one-sided Welch tests on val_loss and val_bpb, the
record criterion) goes to out_dir/rerun.json and out_dir/rerun.md, and the candidate's seeds become a
records-style submission folder in out_dir/record/.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import yaml

from search.rerun.records import RecordError, SubmissionInfo, write_record
from search.rerun.stats import RecordVerdict, SeedSummary, WelchResult, record_criterion, summarize, welch_one_sided
from trainer.metrics import METRICS_FILE, MetricsError, RunMetrics
from trainer.run_config import RunConfig, from_dict, smoke_version

CANDIDATE, BASELINE = "candidate", "baseline"
CONFIG_FILE = "run_config.yaml"
LAUNCH_LOG = "launch.log"  # everything torchrun and every rank printed; train.log is the trainer's own log
RESULT_JSON, RESULT_MD, RECORD_DIR = "rerun.json", "rerun.md", "record"
ERROR_TAIL_LINES = 15
# A rank's own error line (the trainer CLI's "error: ..." or an exception's last line), as opposed to
# torchrun's ChildFailedError summary that always ends a failed launch and hides the cause.
CAUSE_RE = re.compile(r"^(error: |(\w+\.)*\w*(Error|Exception|Diverged|Interrupt)\b)")
REPO_ROOT = Path(__file__).resolve().parents[2]


class RerunError(ValueError):
    """A rerun cannot start or a run failed; the message names the run, its log and the fix."""


@dataclass(frozen=True)
class Launch:
    """How each run is started: processes per run, the device the trainer is told to use, concurrent slots."""

    nproc: int
    device: str | None  # "cpu", or None: each rank takes cuda:LOCAL_RANK
    note: str = ""
    # One entry per run that may train at once: the CUDA_VISIBLE_DEVICES it gets ("" = inherit, on the CPU).
    slots: tuple[str, ...] = ("",)
    # Why no run may train with this launch (a full-scale run asked for GPUs on a machine without them); kept
    # runs are still read, so only a run that needs training raises it.
    refusal: str = ""
    where: str = ""  # the Ray node the runs train on, when not this machine
    cpu_threads: int = 0  # OMP_NUM_THREADS of each CPU rank (0: torch's default); see plan_launch
    share_device: bool = False  # runs on one device take turns at training (trainer train --share-device)

    @property
    def describe(self) -> str:
        where = "CPU process(es) (gloo)" if self.device == "cpu" else "GPU(s) (NCCL)"
        return f"{self.nproc} {where}"


@dataclass(frozen=True)
class SeedRun:
    """One finished (config, seed) run: its metrics, and how this call got it."""

    label: str
    run_dir: Path
    metrics: RunMetrics
    trained_now: bool  # False when kept from an earlier call
    slot: str = ""  # CUDA_VISIBLE_DEVICES it trained on ("" = all, or the CPU)
    started_at: str = ""  # UTC times of this call's launch (empty for kept runs)
    finished_at: str = ""

    @property
    def seed(self) -> int:
        return self.metrics.seed


@dataclass(frozen=True)
class ConfigResult:
    """All seeds of one config with their summaries."""

    label: str
    config: RunConfig
    runs: tuple[SeedRun, ...]
    val_bpb: SeedSummary
    val_loss: SeedSummary

    @property
    def artifact_bytes_max(self) -> int:
        return max(r.metrics.artifact_bytes for r in self.runs)


@dataclass(frozen=True)
class StepTime:
    """Mean training step time of one config at one world size (GPU or process count)."""

    label: str
    world_size: int
    device: str
    runs: int
    step_ms_mean: float
    step_ms_std: float
    tokens_per_s_mean: float


@dataclass(frozen=True)
class Comparison:
    """Candidate vs baseline: plain one-sided Welch tests and the challenge's record criterion."""

    val_loss: WelchResult  # nats, margin 0: is the candidate better at all?
    val_bpb: WelchResult  # margin 0
    record: RecordVerdict  # val_loss, margin 0.005 nats at p < 0.01
    val_bpb_lead: WelchResult | None = None  # margin --min-lead-bpb: is the candidate better by at least that?


@dataclass(frozen=True)
class RerunResult:
    """What a rerun produced and where it wrote it."""

    name: str
    out_dir: Path
    candidate: ConfigResult
    baseline: ConfigResult | None
    step_times: tuple[StepTime, ...]
    comparison: Comparison | None
    json_path: Path
    md_path: Path
    record_dir: Path | None  # None when the submission folder could not be built (see notes)
    notes: tuple[str, ...]


def seed_config(cfg: RunConfig, seed: int, budget_s: float, smoke: bool = False) -> RunConfig:
    """The config one seed trains: its seed and the shared budget."""
    train = dataclasses.replace(cfg.train, seed=seed, budget_s=float(budget_s))
    out = dataclasses.replace(cfg, train=train)
    # smoke_version is applied here rather than by `trainer train --smoke` so metrics.json holds
    # exactly the written config, which is what the resume check compares.
    return smoke_version(out) if smoke else out.validate()


def cpu_refusal(gpus: int) -> str:
    """Why a full-scale run will not train on this machine's CPU, and the ways on."""
    import socket

    asked = f"--gpus {gpus} asks for GPUs" if gpus else "no --gpus was given"
    return (f"{asked} but {socket.gethostname()} has no CUDA GPU, and a full-scale run on a CPU would take days: "
            "run it where the GPUs are (a GPU machine, or a Ray cluster's GPU node: --ray-address, "
            "--node-resource), use --smoke for a CPU check of the same configs, or --gpus 0 to train on the CPU "
            "anyway")


def plan_launch(gpus: int, cpu_procs: int = 1, parallel: int = 1, cpu_ok: bool = True, smoke: bool = False,
                runs_per_gpu: int = 1) -> Launch:
    """DDP over `gpus` GPUs (or `cpu_procs` gloo processes without GPUs), `parallel` runs at once on disjoint GPUs,
    each GPU (or the CPU) shared by `runs_per_gpu` runs that take turns at training. Without cpu_ok, a launch that
    would end on the CPU carries a refusal instead (see Launch.refusal).

    CPU ranks share the cores: each gets cores / (ranks x parallel runs) threads, one for smoke runs. More threads
    than cores made OpenMP spin: on a busy 2-core machine a 256-token smoke step took 27 s with 2 threads."""
    if runs_per_gpu < 1:
        raise RerunError(f"--runs-per-gpu {runs_per_gpu}: pass 1 (a GPU per run) or more")
    if runs_per_gpu > 1 and (gpus > 1 or cpu_procs > 1):
        raise RerunError(f"--runs-per-gpu {runs_per_gpu} shares one device per run: use it with --gpus 1 "
                         "(--cpu-procs 1 on the CPU), or leave it at 1 for DDP runs")
    launch = _plan_devices(gpus, cpu_procs, parallel, cpu_ok, smoke)
    if runs_per_gpu == 1:
        return launch
    return dataclasses.replace(launch, share_device=True,
                               slots=tuple(slot for slot in launch.slots for _ in range(runs_per_gpu)))


def _plan_devices(gpus: int, cpu_procs: int, parallel: int, cpu_ok: bool, smoke: bool) -> Launch:
    import torch

    if gpus < 0 or cpu_procs < 1 or parallel < 1:
        raise RerunError(f"--gpus {gpus} / --cpu-procs {cpu_procs} / --parallel {parallel}: gpus must be >= 0, "
                         "cpu-procs and parallel >= 1")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpu_slots = ("",) * parallel
    threads = 1 if smoke else max(1, (os.cpu_count() or 1) // (cpu_procs * parallel))
    if (gpus == 0 or available == 0) and not cpu_ok:
        return Launch(cpu_procs, "cpu", slots=cpu_slots, refusal=cpu_refusal(gpus), cpu_threads=threads)
    if gpus == 0:
        return Launch(cpu_procs, "cpu", slots=cpu_slots, cpu_threads=threads)
    if available == 0:
        return Launch(cpu_procs, "cpu", note=f"--gpus {gpus} asked but CUDA is not available here: ran on the CPU",
                      slots=cpu_slots, cpu_threads=threads)
    if gpus * parallel > available:
        raise RerunError(f"--gpus {gpus} x --parallel {parallel} needs {gpus * parallel} GPUs; this node has "
                         f"{available}: lower --parallel or --gpus")
    return Launch(gpus, None, slots=gpu_slots(gpus, parallel, available))


def gpu_slots(gpus: int, parallel: int, available: int, visible: str | None = None) -> tuple[str, ...]:
    """CUDA_VISIBLE_DEVICES of each concurrent run: consecutive, disjoint groups of `gpus` of the visible GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(available)]
    if parallel == 1 and gpus == len(ids):
        return ("",)  # the whole node: leave the environment as it is
    return tuple(",".join(ids[k * gpus:(k + 1) * gpus]) for k in range(parallel))


def launch_command(config_path: Path, run_dir: Path, data: Path, tokenizer: Path, launch: Launch) -> list[str]:
    """The torchrun command line of one run (--standalone picks a free rendezvous port itself)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={launch.nproc}",
           "-m", "trainer", "train", "--config", str(config_path), "--data", str(data),
           "--tokenizer", str(tokenizer), "--out", str(run_dir), "--save-weights"]
    if launch.device:
        cmd += ["--device", launch.device]
    if launch.share_device:
        cmd.append("--share-device")
    return cmd


def _child_env(slot: str = "", cpu_threads: int = 0) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # progress lines arrive as they are printed
    if slot:
        env["CUDA_VISIBLE_DEVICES"] = slot
    if cpu_threads and "OMP_NUM_THREADS" not in os.environ:  # the user's own setting wins
        env["OMP_NUM_THREADS"] = str(cpu_threads)
    # `-m trainer` must resolve to this checkout even when the driver runs from another directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass(frozen=True)
class ProcessOutcome:
    """Exit code of a launch, its last output lines and the first error line a rank printed."""

    exit_code: int
    tail: tuple[str, ...]
    cause: str


def stream_process(cmd: list[str], log_path: Path, prefix: str, terminal: TextIO | None,
                   slot: str = "", cpu_threads: int = 0) -> ProcessOutcome:
    """Run cmd (on the GPUs of `slot`, if given), copying each output line to the log (and prefixed to the terminal)."""
    tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
    cause = ""
    with open(log_path, "w") as log:
        log.write("$ " + (f"CUDA_VISIBLE_DEVICES={slot} " if slot else "") + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=_child_env(slot, cpu_threads), cwd=REPO_ROOT)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip("\n"))
                if not cause and CAUSE_RE.match(line) and "ChildFailedError" not in line:
                    cause = line.strip()
                if terminal is not None:
                    terminal.write(f"{prefix} {line}")
                    terminal.flush()
            return ProcessOutcome(proc.wait(), tuple(tail), cause)
        finally:
            if proc.poll() is None:  # the driver was interrupted: do not leave ranks training in the background
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def read_metrics(label: str, seed: int, run_dir: Path) -> RunMetrics:
    """A finished run's metrics; RerunError naming the run and the fix if its metrics.json cannot be read."""
    try:
        return RunMetrics.read(run_dir / METRICS_FILE)
    except MetricsError as exc:
        raise RerunError(f"{label} seed {seed}: {exc}. Delete {run_dir} to train it again") from None


def _check_kept_run(label: str, run_dir: Path, metrics: RunMetrics, cfg: RunConfig, launch: Launch) -> None:
    """A kept run must be this config on this many ranks, or the seeds would not be comparable."""
    if from_dict(metrics.config, where=str(run_dir / METRICS_FILE)) != cfg:
        raise RerunError(
            f"{label} seed {cfg.train.seed}: {run_dir} holds a finished run of another config (or budget); "
            "pass another --out, or delete that folder to retrain it")
    if metrics.world_size != launch.nproc:
        raise RerunError(
            f"{label} seed {cfg.train.seed}: {run_dir} was trained on {metrics.world_size} rank(s), this call "
            f"launches {launch.nproc}; rerun with the same --gpus/--cpu-procs, or pass another --out")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def train_seed(label: str, cfg: RunConfig, run_dir: Path, data: Path, tokenizer: Path, launch: Launch,
               terminal: TextIO | None = sys.stdout, slot: str = "") -> SeedRun:
    """Train one (config, seed) run into run_dir (on the GPUs of `slot`), or keep it if its metrics.json exists."""
    seed = cfg.train.seed
    if (run_dir / METRICS_FILE).is_file():
        metrics = read_metrics(label, seed, run_dir)
        _check_kept_run(label, run_dir, metrics, cfg, launch)
        _say(terminal, f"{label} seed {seed}: finished earlier, kept ({run_dir})")
        return SeedRun(label, run_dir, metrics, trained_now=False)
    if launch.refusal:
        raise RerunError(launch.refusal)
    if run_dir.exists():  # leftovers of a run that died: start it clean (train.log would otherwise append)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config_path = run_dir / CONFIG_FILE
    config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log_path = run_dir / LAUNCH_LOG
    where = launch.describe + (f" (CUDA_VISIBLE_DEVICES={slot})" if slot else "")
    _say(terminal, f"{label} seed {seed}: training on {where}, budget {cfg.train.budget_s:g}s -> {run_dir}")
    started_at = _now()
    outcome = stream_process(launch_command(config_path, run_dir, data, tokenizer, launch), log_path,
                             f"[{label} {seed}]", terminal, slot, launch.cpu_threads)
    if outcome.exit_code != 0 or not (run_dir / METRICS_FILE).is_file():
        last = "\n".join("    " + line for line in outcome.tail)
        raise RerunError(
            f"{label} seed {seed} failed (exit code {outcome.exit_code}): {outcome.cause or 'see the log'}\n"
            f"  full output: {log_path}\n  finished runs are kept: fix the cause and run the same command again "
            f"to continue from this run\n  last lines:\n{last}")
    return SeedRun(label, run_dir, read_metrics(label, seed, run_dir), trained_now=True, slot=slot,
                   started_at=started_at, finished_at=_now())


def train_all(jobs: list[tuple[str, RunConfig, Path]], data: Path, tokenizer: Path, launch: Launch,
              terminal: TextIO | None, train_one=train_seed) -> list[SeedRun]:
    """Train (label, config, run_dir) jobs in order, len(launch.slots) at a time, each with train_one (train_seed's
    signature; search.rerun.remote's trains on a Ray node); the first failure is raised once the runs in flight
    have ended, and no new run starts after it."""
    free_slots: list[str] = list(launch.slots)
    lock, failed = threading.Lock(), threading.Event()

    def work(job: tuple[str, RunConfig, Path]) -> SeedRun | None:
        if failed.is_set():
            return None
        with lock:
            slot = free_slots.pop(0)  # the pool has one thread per slot, so one is always free here
        try:
            return train_one(*job, data, tokenizer, launch, terminal, slot)
        except BaseException:
            failed.set()
            raise
        finally:
            with lock:
                free_slots.append(slot)

    with ThreadPoolExecutor(max_workers=len(launch.slots), thread_name_prefix="rerun-slot") as pool:
        futures = [pool.submit(work, job) for job in jobs]
    for future in futures:
        if future.exception() is not None:
            raise future.exception()
    return [future.result() for future in futures]


def _say(terminal: TextIO | None, message: str) -> None:
    if terminal is not None:
        terminal.write(f"[rerun] {message}\n")
        terminal.flush()


def config_result(label: str, cfg: RunConfig, runs: list[SeedRun]) -> ConfigResult:
    """Seed summaries of one config's runs."""
    return ConfigResult(label, cfg, tuple(runs), summarize([r.metrics.val_bpb for r in runs]),
                        summarize([r.metrics.val_loss for r in runs]))


def step_times(results: list[ConfigResult]) -> tuple[StepTime, ...]:
    """Mean step time per (config, world size, device): the throughput each GPU count actually got."""
    rows = []
    for res in results:
        for world, device in sorted({(r.metrics.world_size, r.metrics.device) for r in res.runs}):
            runs = [r.metrics for r in res.runs if (r.metrics.world_size, r.metrics.device) == (world, device)]
            ms = [m.step_ms for m in runs]
            rows.append(StepTime(res.label, world, device, len(runs), statistics.fmean(ms),
                                 statistics.stdev(ms) if len(ms) > 1 else 0.0,
                                 statistics.fmean(m.tokens_per_s for m in runs)))
    return tuple(rows)


def mixed_devices_note(results: list[ConfigResult]) -> str | None:
    """Why no test is run when the runs trained on more than one kind of device (None when all ran on one)."""
    runs_by_device: dict[str, list[str]] = {}
    for res in results:
        for r in res.runs:
            runs_by_device.setdefault(r.metrics.device or "unknown device", []).append(f"{res.label} seed {r.seed}")
    if len(runs_by_device) < 2:
        return None
    where = "; ".join(f"{device}: {', '.join(runs)}" for device, runs in sorted(runs_by_device.items()))
    # In the same 180 s an H200 trained 11-13% more steps than an H100 and both configs' val_bpb moved by 0.0025,
    # a fifth of the lead being measured (BENCHMARKS.md, "Chip differences (H100 vs H200)"); a test across chips
    # would measure the chips too.
    return (f"the runs trained on {len(runs_by_device)} kinds of device ({where}): in one wallclock budget a faster "
            "device trains more steps, so their val_bpb are not comparable and no significance was computed. "
            "Train the runs of one device again on the other: move their seed folders away (or pass another --out) "
            "and run the same command there")


def compare(candidate: ConfigResult, baseline: ConfigResult, min_lead_bpb: float = 0.0) -> Comparison:
    """One-sided Welch tests (candidate lower is better), the record criterion and, for a positive min_lead_bpb,
    a test of a val_bpb lead above it; needs >= 2 seeds a side."""
    c_loss, b_loss = [r.metrics.val_loss for r in candidate.runs], [r.metrics.val_loss for r in baseline.runs]
    c_bpb, b_bpb = [r.metrics.val_bpb for r in candidate.runs], [r.metrics.val_bpb for r in baseline.runs]
    return Comparison(
        val_loss=welch_one_sided(c_loss, b_loss),
        val_bpb=welch_one_sided(c_bpb, b_bpb),
        record=record_criterion(c_loss, b_loss),
        val_bpb_lead=welch_one_sided(c_bpb, b_bpb, margin=min_lead_bpb) if min_lead_bpb > 0 else None,
    )


def narrow_export_notes(configs: list[tuple[str, RunConfig]]) -> list[str]:
    """A note for each config that exports at fewer bits than the size model says fit (matrices or embedding)."""
    from trainer.sizing.size_model import widest_fitting_bits, widest_fitting_embedding_bits
    from trainer.quant import embedding_bits, width_name

    notes = []
    for label, cfg in configs:
        widest = widest_fitting_bits(cfg)
        if widest is not None and widest > cfg.export.quant_bits:
            # At int6 the baseline shape lost 0.029 val_bpb to the round trip, the loop it was compared with 0.016;
            # most of the loop's lead was that, and the baseline was predicted to fit at int8 (BENCHMARKS.md,
            # "Does a searched recurrence beat the baseline shape at 180 s").
            notes.append(f"the {label} exports at int{cfg.export.quant_bits}, but the size model predicts int{widest} "
                         "fits: the round trip costs it val_bpb that the wider export would keep; pass --widest-bits "
                         "to compare both configs at the widest bits that fit")
            continue
        widest_embedding, current = widest_fitting_embedding_bits(cfg), embedding_bits(cfg.export)
        if widest_embedding > current:
            # The int6 embedding was most of the round trip's cost (baseline shape 0.027, loop 0.018; BENCHMARKS.md,
            # "Exports").
            notes.append(f"the {label} exports its embedding at {width_name(current)}, but the size model predicts "
                         f"{width_name(widest_embedding)} fits: the embedding is also the output head, and its "
                         "rounding cost most of the round trip at int6 on an H100; pass --widest-bits, or set "
                         "export.embedding_bits")
    return notes


def rerun(candidate: RunConfig, baseline: RunConfig | None, seeds: list[int], gpus: int, budget_s: float,
          data: Path, tokenizer: Path, out_dir: Path, *, name: str = "rerun", cpu_procs: int = 1,
          parallel: int = 1, smoke: bool = False, info: SubmissionInfo | None = None, source: dict | None = None,
          terminal: TextIO | None = sys.stdout, cpu_ok: bool = True, node=None, runs_per_gpu: int = 1,
          min_lead_bpb: float = 0.0) -> RerunResult:
    """Train candidate (and baseline) for each seed the same way, compare them, write rerun.json/md and record/.

    cpu_ok False refuses to train on a CPU (see plan_launch). node (a search.rerun.remote.NodePlacement): train
    each run on a Ray node instead of here, where the data and tokenizer are checked. min_lead_bpb > 0 adds a test
    of the candidate's val_bpb lead being above it."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise RerunError(f"seeds {seeds}: pass at least one seed, each once")
    if budget_s <= 0:
        raise RerunError(f"--budget-s {budget_s}: must be positive training seconds")
    if not 0 <= min_lead_bpb < 1:
        raise RerunError(f"--min-lead-bpb {min_lead_bpb}: pass a val_bpb lead from 0 (no such test) to below 1, "
                         "e.g. 0.01")
    out_dir = Path(out_dir).resolve()
    train_one = train_seed
    if node is not None:  # paths are the node's: neither resolved nor checked here
        if runs_per_gpu != 1:
            raise RerunError(f"--runs-per-gpu {runs_per_gpu} on a cluster: each run asks Ray for its own GPUs; "
                             "leave it at 1 there, or rerun on the GPU machine itself")
        data, tokenizer = Path(data), Path(tokenizer)
        launch = node.plan(data, tokenizer, gpus, cpu_procs, parallel, cpu_ok, smoke, terminal)
        train_one = node.trainer(gpus, cpu_procs, cpu_ok, smoke)
    else:
        data, tokenizer = Path(data).resolve(), Path(tokenizer).resolve()
        if not data.is_dir():
            raise RerunError(f"--data {data}: no such folder; pass the folder with fineweb_train_*.bin/fineweb_val_*.bin")
        if not tokenizer.is_file():
            raise RerunError(f"--tokenizer {tokenizer}: no such file; pass the SentencePiece .model of the shards")
        launch = plan_launch(gpus, cpu_procs, parallel, cpu_ok, smoke, runs_per_gpu)
    notes: list[str] = []
    if launch.note:
        _say(terminal, launch.note)
    configs = [(CANDIDATE, candidate)] + ([(BASELINE, baseline)] if baseline is not None else [])
    for note in narrow_export_notes(configs):
        notes.append(note)
        _say(terminal, f"note: {note}")
    # Seed-major order: after any crash both configs have (nearly) the same seeds done, and with two slots
    # each wave trains the candidate and the baseline side by side.
    jobs = [(label, seed_config(cfg, seed, budget_s, smoke), out_dir / label / f"seed{seed}")
            for seed in seeds for label, cfg in configs]
    runs: dict[str, list[SeedRun]] = {label: [] for label, _ in configs}
    for run in train_all(jobs, data, tokenizer, launch, terminal, train_one):
        runs[run.label].append(run)
    results = [config_result(label, seed_config(cfg, seeds[0], budget_s, smoke), runs[label])
               for label, cfg in configs]
    cand, base = results[0], (results[1] if baseline is not None else None)
    comparison = None
    mixed = mixed_devices_note(results)
    if mixed:
        notes.append(mixed)
        _say(terminal, f"note: {mixed}")
    elif base is not None and len(seeds) >= 2:
        comparison = compare(cand, base, min_lead_bpb)
    elif base is not None:
        notes.append("one seed per config: Welch's test needs at least 2, so no significance was computed")
    trained_now = [r.trained_now for res in results for r in res.runs]
    if launch.note and any(trained_now):  # a fallback that trained nothing would mislabel kept runs
        notes.append(launch.note)
    if not all(trained_now):
        kept = trained_now.count(False)
        notes.append(f"{kept} run(s) were finished by an earlier call and kept")

    record_dir: Path | None = out_dir / RECORD_DIR
    if record_dir.exists():  # derived from the runs; rebuilt so no stale seed log survives
        shutil.rmtree(record_dir)
    try:
        write_record([r.run_dir for r in cand.runs], record_dir, info or SubmissionInfo(name=name),
                     verdict=comparison.record if comparison else None)
    except RecordError as exc:
        # Kept runs copied from another machine may all lack model.ptz: the comparison still stands, so write it.
        shutil.rmtree(record_dir, ignore_errors=True)
        record_dir = None
        notes.append(f"no submission folder: {exc}. The comparison above is complete")
        _say(terminal, f"[rerun] {notes[-1]}")

    settings = {"name": name, "seeds": seeds, "gpus_requested": gpus, "ranks": launch.nproc,
                "parallel": len(launch.slots), "slots": list(launch.slots), "runs_per_gpu": runs_per_gpu,
                "device": launch.device or "cuda", "budget_s": float(budget_s), "smoke": smoke,
                **({"node": launch.where} if launch.where else {}),
                "data": str(data), "tokenizer": str(tokenizer), "source": source or {}}
    result = RerunResult(name, out_dir, cand, base, step_times(results), comparison, out_dir / RESULT_JSON,
                         out_dir / RESULT_MD, record_dir, tuple(notes))
    result.json_path.write_text(json.dumps(result_dict(result, settings), indent=2) + "\n")
    result.md_path.write_text(result_markdown(result, settings))
    wrote = f"{result.json_path}, {result.md_path}" + (f", {record_dir}/" if record_dir else "")
    _say(terminal, f"{verdict_line(result)}\n[rerun] wrote {wrote}")
    return result


# ---- output -------------------------------------------------------------------------------------------------

def _summary_dict(s: SeedSummary) -> dict:
    return dataclasses.asdict(s)


def _welch_dict(w: WelchResult) -> dict:
    return {"t": w.t, "dof": w.dof, "p_value": w.p_value, "mean_gain": w.mean_gain, "margin": w.margin}


def _config_dict(res: ConfigResult) -> dict:
    config = res.config.to_dict()
    config["train"].pop("seed")  # per run, in runs[]
    return {
        "val_bpb": _summary_dict(res.val_bpb), "val_loss": _summary_dict(res.val_loss),
        "artifact_bytes_max": res.artifact_bytes_max,
        "runs": [{"seed": r.seed, "run_dir": str(r.run_dir), "val_bpb": r.metrics.val_bpb,
                  "val_loss": r.metrics.val_loss, "artifact_bytes": r.metrics.artifact_bytes, "steps": r.metrics.steps,
                  "step_ms": r.metrics.step_ms, "train_s": r.metrics.train_s, "tokens_per_s": r.metrics.tokens_per_s,
                  "world_size": r.metrics.world_size, "device": r.metrics.device, "trained_now": r.trained_now,
                  "slot": r.slot, "started_at": r.started_at, "finished_at": r.finished_at} for r in res.runs],
        "config": config,
    }


def result_dict(result: RerunResult, settings: dict) -> dict:
    """The rerun.json content."""
    comp = result.comparison
    return {
        **settings,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        CANDIDATE: _config_dict(result.candidate),
        BASELINE: _config_dict(result.baseline) if result.baseline else None,
        "step_time": [dataclasses.asdict(s) for s in result.step_times],
        "welch": None if comp is None else {
            "test": "one-sided Welch t-test, H1: mean(baseline) - mean(candidate) > margin",
            "val_loss_nats": _welch_dict(comp.val_loss), "val_bpb": _welch_dict(comp.val_bpb),
            **({"val_bpb_lead": _welch_dict(comp.val_bpb_lead)} if comp.val_bpb_lead is not None else {})},
        "record_criterion": None if comp is None else {
            "min_gain_nats": comp.record.min_gain_nats, "alpha": comp.record.alpha,
            **_welch_dict(comp.record.welch), "passes": comp.record.passes, "explain": comp.record.explain()},
        "record_dir": None if result.record_dir is None else str(result.record_dir),
        "notes": list(result.notes),
    }


def verdict_line(result: RerunResult) -> str:
    """One line: candidate (and baseline) val_bpb and the record verdict."""
    c = result.candidate
    line = f"candidate val_bpb {c.val_bpb.mean:.4f} ± {c.val_bpb.std:.4f} over {c.val_bpb.n} seed(s)"
    if result.baseline:
        b = result.baseline
        line += f"; baseline {b.val_bpb.mean:.4f} ± {b.val_bpb.std:.4f}"
    if result.comparison:
        line += f"; record criterion: {'MET' if result.comparison.record.passes else 'not met'}"
    return line


def result_markdown(result: RerunResult, settings: dict) -> str:
    """The rerun.md content: per-seed table, summaries, step times, tests and verdict."""
    configs = [r for r in (result.candidate, result.baseline) if r is not None]
    seed_rows = [f"| {res.label} | {r.seed} | {r.metrics.val_bpb:.4f} | {r.metrics.val_loss:.4f} "
                 f"| {r.metrics.artifact_bytes:,} | {r.metrics.steps:,} | {r.metrics.step_ms:.1f} "
                 f"| {r.metrics.world_size} | {'yes' if r.trained_now else 'kept'} |"
                 for res in configs for r in res.runs]
    summary_rows = [f"| {res.label} | {res.val_bpb.n} | {res.val_bpb.mean:.4f} ± {res.val_bpb.std:.4f} "
                    f"| {res.val_loss.mean:.4f} ± {res.val_loss.std:.4f} | {res.artifact_bytes_max:,} |"
                    for res in configs]
    step_rows = [f"| {s.label} | {s.world_size} | {s.device} | {s.runs} | {s.step_ms_mean:.1f} ± {s.step_ms_std:.1f} "
                 f"| {s.tokens_per_s_mean:,.0f} |" for s in result.step_times]
    if any(r.trained_now for res in configs for r in res.runs):
        how = (f"{settings['ranks']} rank(s) on {settings['device']} per run, {settings['parallel']} run(s) at a "
               "time" + (f", {settings['runs_per_gpu']} per device taking turns to train"
                         if settings.get("runs_per_gpu", 1) > 1 else ""))
    else:  # this call only read finished runs: its own launch plan says nothing about them
        how = "every run kept from an earlier call (their devices are under Step time)"
    lines = [
        f"# Rerun `{result.name}`", "",
        f"{len(settings['seeds'])} seed(s) {settings['seeds']}, {how}, "
        f"budget {settings['budget_s']:g} training s{' (smoke)' if settings['smoke'] else ''}.", "",
        f"**{verdict_line(result)}**", "",
        "| config | seeds | val_bpb (mean ± std) | val_loss nats (mean ± std) | max artifact bytes |",
        "|---|---:|---:|---:|---:|", *summary_rows, "",
        "## Per seed", "",
        "| config | seed | val_bpb | val_loss | artifact bytes | steps | step ms | ranks | trained |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|", *seed_rows, "",
        "## Step time per GPU count", "",
        "| config | world size | device | runs | step ms (mean ± std) | tokens/s |",
        "|---|---:|---|---:|---:|---:|", *step_rows, "",
        "## Significance", "",
    ]
    comp = result.comparison
    if comp is None:
        why = ("no baseline was run." if result.baseline is None
               else "the runs trained on different devices (see the note below)." if mixed_devices_note(configs)
               else "fewer than 2 seeds.")
        lines.append(f"No test: {why}")
    else:
        for metric, w in (("val_loss (nats)", comp.val_loss), ("val_bpb", comp.val_bpb)):
            lines.append(f"- {metric}: baseline - candidate = {w.mean_gain:+.5f}; one-sided Welch t={w.t:.3f}, "
                         f"dof={w.dof:.1f}, p={w.p_value:.4g} (H1: the candidate is lower)")
        if comp.val_bpb_lead is not None:
            w = comp.val_bpb_lead
            lines.append(f"- val_bpb lead above {w.margin:g}: one-sided Welch t={w.t:.3f}, dof={w.dof:.1f}, "
                         f"p={w.p_value:.4g} (H1: baseline - candidate > {w.margin:g})")
        lines.append(f"- record criterion: {comp.record.explain()}")
    if result.record_dir is not None:
        lines += ["", f"Submission folder: `{result.record_dir}`"]
    lines.append("")
    lines += [f"Note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


__all__ = ["rerun", "RerunResult", "RerunError", "SeedRun", "ConfigResult", "StepTime", "Comparison",
           "seed_config", "narrow_export_notes", "plan_launch", "gpu_slots", "launch_command", "train_seed",
           "train_all", "compare", "step_times", "mixed_devices_note"]
