"""`python -m search`: run, resume, report and watch depth-recurrence searches.

Each command is one `add_*` function registering a subparser with `func` set; later commands add themselves
to COMMANDS without touching the others (`rerun` comes from search.rerun.cli).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

from search import smoke, store
from search.rerun.cli import PRESETS_DIR, add_rerun_command
from search.settings import EARLY_STOPPING, LOGGERS, SAMPLERS, SearchSettings, SettingsError, is_uri, resolve_local
from search.tune.loggers import check_logger
from search.settings import OBJECTIVE_METRICS

# The shipped default space, found from any working directory (it is package data of `spaces`).
DEFAULT_SPACE = str(Path(__file__).resolve().parents[1] / "spaces" / "default.yaml")
DEFAULT_DATA = "data/datasets/fineweb10B_sp1024"
DEFAULT_TOKENIZER = "data/tokenizers/fineweb_1024_bpe.model"
DEFAULT_TRIALS, DEFAULT_BUDGET_S = 16, 600.0


def _seconds(text: str) -> float:
    """argparse type: 0 (no limit) or a positive number of seconds; checked before Ray starts or a folder is made."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 (no limit) or a positive number of seconds")
    return value


def _stop_after_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stop-after-s", type=_seconds, default=0.0, metavar="SECONDS",
                   help="stop the driver after this many seconds as Ctrl-C would (default 0: run to the end): trials "
                   "in flight stay resumable from their last rung checkpoint, finished ones are kept, and the "
                   "report is written; for machines held for a fixed time. `resume` goes on, on any machine")
    p.add_argument("--drain-after-s", type=_seconds, default=0.0, metavar="SECONDS",
                   help="launch no new trial after this many seconds (default 0: no limit) and end when the trials "
                   "in flight do, so none is cut short; `resume --from-study` launches the rest. With "
                   "--stop-after-s later, as a backstop, for machines held for a fixed time")


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None,
                   help=f"local folder or cloud URI holding searches (default: ${store.STORAGE_ENV} or {store.DEFAULT_STORAGE})")


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="start a new search",
        description="Start a Ray Tune search: Optuna (TPE or NSGA-II) proposes configs from the space, configs "
        "predicted over the byte limit are rejected before launch, ASHA stops weak trials at rungs of training "
        "time, and every trial checkpoints at each rung. Joins a running Ray cluster if there is one.")
    p.add_argument("--space", default=DEFAULT_SPACE, help="search space YAML (default: the shipped spaces/default.yaml)")
    p.add_argument("--name", required=True, help="name of the search (its folder under --storage)")
    p.add_argument("--smoke", action="store_true",
                   help="a CPU-sized run of the whole path in minutes: every trial trains the space's shapes on short "
                   "sequences and tiny batches for a few steps, scored on a val prefix; defaults become "
                   f"--trials {smoke.TRIALS} --budget-s {smoke.BUDGET_S:g}, and without --data/--tokenizer a small "
                   "corpus built on this machine (no network) is used")
    p.add_argument("--trials", type=int, default=None,
                   help=f"trials to launch (size-rejected configs do not count; default {DEFAULT_TRIALS}, "
                   f"{smoke.TRIALS} with --smoke)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial; >1 runs DDP via Ray Train (default: 1 if the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (or per DDP worker)")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default 0: as resources allow)")
    p.add_argument("--trials-per-gpu", type=int, default=1, metavar="N",
                   help="trials placed on each GPU (default 1). With N > 1 they start up and compile at once and "
                   "take turns to train, so the next trial's compile hides behind the current one's training; "
                   "each trial still trains alone on the GPU for its budget")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"training seconds per trial (default {DEFAULT_BUDGET_S:g}, {smoke.BUDGET_S:g} with --smoke)")
    p.add_argument("--grace-s", type=float, default=0.0,
                   help="first ASHA rung in training seconds (default: budget / reduction_factor, one rung at rf 3; "
                        "earlier rungs prune deep configs, which learn slower at first)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default 3)")
    p.add_argument("--early-stopping", choices=EARLY_STOPPING, default="asha",
                   help="asha (default): ASHA stops weak trials at its rungs. none: every trial trains to the "
                   "budget and still reports at the rungs, so the report ranks every trial's rung scores against "
                   "its final one: a fidelity study of how early a rung can be trusted, and what a rung cut would "
                   "have lost (ASHA's own searches complete only the trials its rungs favoured)")
    p.add_argument("--report-every-s", type=float, default=0.0,
                   help="also report (val-prefix evaluation + checkpoint) every this many training seconds between "
                   "ASHA's rungs (default 0: at the rungs only). Fewer reports cost less evaluation time, but a "
                   "resumed or node-lost trial restarts from its last report")
    p.add_argument("--rung-roundtrip", action="store_true",
                   help="score each report after the artifact's quantization round trip, as the final val_bpb is, "
                   "so ASHA ranks what the export will score (the unquantized score is reported too)")
    p.add_argument("--rung-cooldown-fraction", type=float, default=0.0, metavar="FRACTION",
                   help="score each report after a learning-rate cooldown of this fraction of the steps trained so "
                   "far (0 to 0.5; default 0: none), then rewind it: evaluation time, never training budget")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="tpe: minimize val_bpb; nsga2: minimize (val_bpb, artifact_bytes) together")
    p.add_argument("--objective", choices=OBJECTIVE_METRICS, default="val_bpb",
                   help="the final figure the search minimizes: val_bpb (default, the round trip's plain score) or "
                   "val_bpb_sliding (its sliding-window score; needs --set train.eval_stride=N). The report shows both")
    p.add_argument("--seed", type=int, default=None, help="sampler seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting in every suggested config, e.g. --set train.compile=false")
    p.add_argument("--enqueue", action="append", default=[], metavar="CONFIG",
                   help="run config file (e.g. spaces/presets/baseline.yaml) whose point of the space is tried first, "
                   "so known schemes sit in the same table and frontier; repeatable")
    p.add_argument("--enqueue-presets", action="store_true",
                   help="enqueue every spaces/presets/*.yaml that is a point of the space (others are skipped)")
    p.add_argument("--data", default=None,
                   help=f"shard folder (default {DEFAULT_DATA}; with --smoke, the built-in smoke corpus). On a "
                   "cluster it must exist on the nodes that train; the head need not hold it")
    p.add_argument("--tokenizer", default=None,
                   help=f"SentencePiece model (default {DEFAULT_TOKENIZER}; with --smoke, the smoke corpus's)")
    p.add_argument("--ray-address", default="",
                   help="Ray cluster to join (default: $RAY_ADDRESS, else a running one, else local); 'local' forces local")
    p.add_argument("--max-failures", type=int, default=2, help="retries per trial after a lost worker/node")
    p.add_argument("--local-dir", default="", help="where study.db and reports go when --storage is a cloud URI")
    _stop_after_args(p)
    _storage_arg(p)
    _study_and_logger_args(p)
    p.set_defaults(func=cmd_run)


def _data_paths(args: argparse.Namespace) -> tuple[str, str]:
    """--data and --tokenizer made absolute; with --smoke and neither given, the embedded smoke corpus (built
    here on first use). They need not exist on this machine: the data check runs where trials run."""
    smoke_run = getattr(args, "smoke", False)
    if smoke_run and args.data is None and args.tokenizer is None:
        return smoke.embedded_data(progress=lambda line: print(f"[search] {line}", flush=True))
    if smoke_run and (args.data is None) != (args.tokenizer is None):
        raise SettingsError("--smoke: pass both --data and --tokenizer, or neither (the built-in smoke corpus)")
    return (resolve_local(args.data or DEFAULT_DATA, "--data"),
            resolve_local(args.tokenizer or DEFAULT_TOKENIZER, "--tokenizer"))


def _study_and_logger_args(p: argparse.ArgumentParser) -> None:
    """Where the Optuna study lives, Ray's W&B/MLflow loggers, and NSGA-II under ASHA (saved in search.json)."""
    p.add_argument("--storage-url", default="", metavar="URL",
                   help="Optuna storage for the study: sqlite:///PATH, a database server URL (postgresql://..., "
                   "mysql+pymysql://...), or journal:///PATH for a JournalStorage file on storage every machine "
                   "shares (default: study.db in the search folder); status, report and resume read it from "
                   "search.json")
    p.add_argument("--logger", choices=[name for name in LOGGERS if name], default="",
                   help="also send every trial's results to Weights & Biases or MLflow (Ray's logger callbacks; "
                   "needs the package: pip install wandb / mlflow)")
    p.add_argument("--asha-with-nsga2", action="store_true",
                   help="allow --sampler nsga2 with --early-stopping asha: ASHA then stops trials on val_bpb alone "
                   "and NSGA-II learns only from the trials that finish")


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """Validate the run flags into SearchSettings (paths made absolute; the space must exist here)."""
    storage = store.normalize_storage(args.storage)
    smoke_run = getattr(args, "smoke", False)
    data_dir, tokenizer = _data_paths(args)
    settings = SearchSettings(
        name=args.name,
        space=resolve_local(args.space, "--space", must_exist=True),
        storage=storage,
        data_dir=data_dir,
        tokenizer=tokenizer,
        trials=args.trials if args.trials is not None else (smoke.TRIALS if smoke_run else DEFAULT_TRIALS),
        gpus_per_trial=0.0 if args.gpus_per_trial is None else args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent,
        trials_per_gpu=args.trials_per_gpu,
        budget_s=args.budget_s if args.budget_s is not None else (smoke.BUDGET_S if smoke_run else DEFAULT_BUDGET_S),
        grace_s=args.grace_s,
        reduction_factor=args.reduction_factor,
        early_stopping=args.early_stopping,
        report_every_s=args.report_every_s,
        rung_roundtrip=args.rung_roundtrip,
        rung_cooldown_fraction=args.rung_cooldown_fraction,
        objective=args.objective,
        sampler=args.sampler,
        seed=args.seed,
        overrides=tuple(args.overrides),
        ray_address=args.ray_address,
        max_failures=args.max_failures,
        local_dir=resolve_local(args.local_dir, "--local-dir") if args.local_dir else "",
        extra={"smoke": True} if smoke_run else {},
        storage_url=store.check_storage_url(args.storage_url),
        logger=check_logger(args.logger),
        asha_with_nsga2=args.asha_with_nsga2,
    ).validate()
    if is_uri(storage) and not args.local_dir:
        settings = dataclasses.replace(settings, local_dir=str(Path(store.DEFAULT_STORAGE).resolve()))
    return settings


def _check_space(settings: SearchSettings):
    """Load the space once in the driver so a bad file fails here, not inside Ray; return it."""
    from search.tune.searcher import import_object, space_loader_of

    space, _ = import_object(space_loader_of(settings))(settings.space)
    return space


def _base_config(space, settings: SearchSettings):
    """What every trial starts from: the space's base with the search's overrides (None for a space without one)."""
    base = getattr(space, "base", None)
    return smoke.space_base_config(space, list(settings.overrides)) if base is not None else None


def _with_smoke(settings: SearchSettings, space) -> SearchSettings:
    """With --smoke: the smoke train settings as overrides ahead of the user's own --set items."""
    if not settings.extra.get("smoke"):
        return settings
    base = _base_config(space, settings)
    if base is None:
        raise SettingsError(f"--smoke: the space {settings.space} has no base config to make small; drop --smoke")
    items = smoke.smoke_overrides(base)
    print(f"[search] --smoke: every trial trains with {' '.join(items)} (then your --set items)", flush=True)
    return dataclasses.replace(settings, overrides=tuple(items) + settings.overrides).validate()


def _largest_config(space, settings: SearchSettings):
    """The space's most memory-hungry shape at this search's train settings, or None if the space cannot say."""
    from search.tune.capacity import largest_config

    base = _base_config(space, settings)
    if base is None or not hasattr(space, "orders"):
        return None
    return largest_config(space, base)


def _with_enqueued(settings: SearchSettings, files: list[str],
                   presets: bool) -> tuple[SearchSettings, list[tuple[str, dict]]]:
    """Settings whose `enqueue` holds the given config files (each must be a point of the space) and, with
    --enqueue-presets, the presets that are points of it, plus their (file, assignment); says what it queued."""
    from search.tune.searcher import space_points

    points = space_points(settings, [resolve_local(f, "--enqueue", must_exist=True) for f in files])
    if presets:
        preset_files = [str(p) for p in sorted(PRESETS_DIR.glob("*.yaml"))]
        found = space_points(settings, preset_files, skip_outside=True)
        skipped = sorted({Path(f).stem for f in preset_files} - {Path(f).stem for f, _ in found})
        given = {f for f, _ in points}
        points += [(f, a) for f, a in found if f not in given]
        if skipped:
            print(f"[search] presets that are no point of this space, not enqueued: {', '.join(skipped)}", flush=True)
    for path, _ in points:
        print(f"[search] enqueued {Path(path).stem} ({path})", flush=True)
    if len(points) > settings.trials:
        left = [Path(path).stem for path, _ in points[settings.trials:]]
        print(f"[search] --trials {settings.trials} launches only the first {settings.trials} of the "
              f"{len(points)} enqueued configs; not run: {', '.join(left)} (pass --trials {len(points)} or more to "
              "run them all)", flush=True)
    return dataclasses.replace(settings, enqueue=tuple(path for path, _ in points)), points


def _check_data(settings: SearchSettings, space, connected: bool) -> None:
    """Check the data and tokenizer once, where trials will read them (see search.datacheck): on this machine
    before Ray starts when it holds them, else (connected) on a node of the joined cluster."""
    from search.datacheck import check_where_trials_run, held_here
    from search.tune import tuner

    if held_here(settings) == connected:
        return  # checked already, or to be checked once connected
    if connected and not tuner.joined_cluster():
        missing = settings.data_dir if not Path(settings.data_dir).is_dir() else settings.tokenizer
        raise SettingsError(
            f"{missing} does not exist on this machine, and no Ray cluster was joined whose nodes could hold it; "
            "pass existing --data and --tokenizer (`python -m trainer data download` or `data build` makes them), "
            "use --smoke for the built-in smoke corpus, or run on a cluster (--ray-address) whose nodes hold them")
    base = _base_config(space, settings)
    summary, where = check_where_trials_run(settings, base.model.vocab_size if base else None, remote=connected)
    print(f"[search] data checked on {where}: {summary.describe()}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from search.tune import driver, tuner

    settings = settings_from_args(args)
    store.ensure_new(settings)
    space = _check_space(settings)
    settings = _with_smoke(settings, space)
    settings, points = _with_enqueued(settings, args.enqueue, args.enqueue_presets)
    _check_data(settings, space, connected=False)
    print(f"[search] {tuner.connect(settings.ray_address)}", flush=True)
    settings = tuner.resolve_gpus(settings, args.gpus_per_trial)
    settings, note = tuner.cap_cpu_concurrency(settings, _largest_config(space, settings))
    if note:
        print(f"[search] {note}", flush=True)
    _check_data(settings, space, connected=True)
    periodic = f" and every {settings.report_every_s:g}s" if settings.report_every_s else ""
    sharing = f" ({settings.trials_per_gpu} per GPU, taking turns)" if settings.trials_per_gpu > 1 else ""
    print(f"[search] {settings.name}: {settings.trials} trials, {settings.gpus_per_trial:g} GPU(s) each{sharing}, "
          f"budget {settings.budget_s:g}s, early stopping {settings.early_stopping_text}, reports at the rungs"
          f"{periodic}, sampler {settings.sampler}; study {store.study_url(settings)}", flush=True)
    with driver.driving(settings), _driver_failure(settings):
        tuner.run_search(settings, points, stop_after_s=args.stop_after_s, drain_after_s=args.drain_after_s)
    return _finish(settings)


class DriverFailed(Exception):
    """The search driver stopped on an error; trials in flight were marked interrupted."""


@contextlib.contextmanager
def _driver_failure(settings: SearchSettings):
    """Turn an error that ends the driver into one line, leaving its trials in flight resumable (not running)."""
    try:
        yield
    except (SettingsError, KeyboardInterrupt):
        raise
    except Exception as exc:
        from search.tune.searcher import mark_interrupted, open_study
        from search.vocabulary import RUNNING, STATUS, TUNE_ID

        running = {t.user_attrs.get(TUNE_ID) for t in open_study(settings).get_trials(deepcopy=False)
                   if t.user_attrs.get(STATUS) == RUNNING and t.user_attrs.get(TUNE_ID)}
        first = next((line for line in str(exc).splitlines() if line.strip()), "")[:300]
        count = mark_interrupted(settings, f"its driver stopped on {type(exc).__name__}: {first}; "
                                           f"`python -m search resume {settings.name}` continues it", running)
        raise DriverFailed(
            f"the search driver stopped: {type(exc).__name__}: {first}. {count} trial(s) in flight were marked "
            f"interrupted and finished ones are kept: fix the cause and run `python -m search resume "
            f"{settings.name}`") from exc


def _finish(settings: SearchSettings) -> int:
    """Write the report and print the status; 1 when no trial completed (the search found nothing)."""
    from search.analysis.report import load_study, status_text, write_report
    from search.tune.searcher import launched_count
    from search.vocabulary import COMPLETE, ENQUEUED_FROM, FAILED, INFEASIBLE_MEASURED, INTERRUPTED, REASON, STATUS

    paths = write_report(settings, "md", Path("frontier.png"))
    print(status_text(settings))
    print(f"[search] report: {paths['table']}  plot: {paths['plot']}")
    trials = load_study(settings).get_trials(deepcopy=False)
    queued = [t.user_attrs.get(ENQUEUED_FROM, f"#{t.number}") for t in trials if t.state.name == "WAITING"]
    if queued and launched_count(settings) >= settings.trials:
        print(f"[search] enqueued but never run, as all {settings.trials} trials were used: {', '.join(queued)}; "
              "a search with a higher --trials runs them too", flush=True)
    if any(t.user_attrs.get(STATUS) in (COMPLETE, INFEASIBLE_MEASURED, INTERRUPTED) for t in trials):
        return 0  # something completed, or the driver was stopped with trials to resume
    reasons = sorted({str(t.user_attrs.get(REASON)) for t in trials if t.user_attrs.get(STATUS) == FAILED})
    why = f"; failures: {'; '.join(reasons[:3])}" if reasons else ""
    print(f"error: search {settings.name}: no trial completed{why}", file=sys.stderr, flush=True)
    return 1


def add_resume(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resume", help="continue a search whose driver stopped",
        description="Restore the Tune experiment and the Optuna study of NAME: finished trials are kept, "
        "unfinished ones resume from their last rung checkpoint, and the search runs to its trial count.")
    p.add_argument("name", help="search name")
    p.add_argument("--ray-address", default=None, help="override the Ray cluster to join ('local' forces local)")
    p.add_argument("--from-study", action="store_true",
                   help="go on from the study alone, without Tune's experiment state (lost, or left on another "
                   "machine): trials that were in flight start again from scratch as new trials, finished ones "
                   "are kept, and the sampler learns from all of them")
    p.add_argument("--grace-s", type=_seconds, default=0.0, metavar="SECONDS",
                   help="with --from-study: move the first ASHA rung to this many training seconds for the trials "
                   "still to launch (default 0: keep it), e.g. when the report's rung fidelity shows the rung does "
                   "not rank; finished trials keep their rungs and the report reads both")
    _stop_after_args(p)
    _storage_arg(p)
    p.set_defaults(func=cmd_resume)


def _close_orphans(settings: SearchSettings) -> None:
    """If the search's driver died, mark the trials it left running as interrupted, and say so."""
    from search.tune import driver

    count = driver.close_orphans(settings)
    if count:
        print(f"[search] {settings.name}: {driver.gone_reason(driver.read_record(settings))}; {count} trial(s) it "
              f"left running are marked interrupted: `python -m search resume {settings.name}` continues them",
              flush=True)


def cmd_resume(args: argparse.Namespace) -> int:
    from search.tune import driver, tuner

    settings = store.load_settings(args.name, args.storage)
    driver.refuse_if_alive(settings)
    _close_orphans(settings)
    if args.grace_s:
        if not args.from_study:
            raise SettingsError("--grace-s works with `resume --from-study`; a plain resume restores Tune's own "
                                "scheduler and its rungs: add --from-study, or leave the flag out")
        moved = settings.with_first_rung(args.grace_s)
        if moved is not settings:
            store.save_settings(moved)
            print(f"[search] {settings.name}: first rung moved from {settings.rung_s:g} s to {moved.rung_s:g} s "
                  f"for the trials still to launch ({moved.early_stopping_text})", flush=True)
        settings = moved
    if args.ray_address is not None:
        settings = dataclasses.replace(settings, ray_address=args.ray_address)
    if args.drain_after_s and not args.from_study:
        raise SettingsError("--drain-after-s works with `run` and `resume --from-study`; a plain resume restores "
                            "Tune's own searcher, which takes no deadline: add --from-study, or leave the flag out")
    print(f"[search] {tuner.connect(settings.ray_address)}", flush=True)
    if args.from_study:
        print(f"[search] continuing {settings.name} from its study {store.study_url(settings)}", flush=True)
        with driver.driving(settings), _driver_failure(settings):
            tuner.continue_from_study(settings, stop_after_s=args.stop_after_s, drain_after_s=args.drain_after_s)
        return _finish(settings)
    print(f"[search] resuming {settings.name} from {store.experiment_path(settings)}", flush=True)
    with driver.driving(settings), _driver_failure(settings):
        tuner.resume_search(settings, stop_after_s=args.stop_after_s)
    return _finish(settings)


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="table of all trials and the (val_bpb, artifact_bytes) Pareto frontier",
        description="Write the trial table (md, csv or html), frontier.csv, summary.json and optionally a plot "
        "under <storage>/<name>/report/, and print the summary.")
    p.add_argument("name", help="search name")
    p.add_argument("--format", choices=("md", "csv", "html"), default="md", help="table format (default md)")
    p.add_argument("--plot", type=Path, default=None, help="PNG file (relative paths go in the report folder)")
    _storage_arg(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from search.analysis.fidelity import RungFidelity
    from search.analysis.report import fidelity_frame, time_text, write_report

    settings = store.load_settings(args.name, args.storage)
    _close_orphans(settings)
    paths = write_report(settings, args.format, args.plot)
    info = json.loads(paths["summary"].read_text())
    print(json.dumps(info, indent=2))
    print(f"\ntime: {time_text(info['time'])}")
    fidelity = [RungFidelity(**f) for f in info["fidelity"]]
    print("\nfidelity (Spearman of rung val_bpb vs final val_bpb over completed trials):")
    print(fidelity_frame(fidelity).to_string(index=False) if fidelity else "  no rung reports yet")
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="progress of a search (works while it runs)",
                       description="Counts per status, running trials with their last rung value, best so far.")
    p.add_argument("name", help="search name")
    p.add_argument("--watch", type=float, default=0.0, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    _storage_arg(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from search.analysis.report import status_text

    settings = store.load_settings(args.name, args.storage)
    while True:
        _close_orphans(settings)
        print(status_text(settings), flush=True)
        if args.watch <= 0:
            return 0
        time.sleep(args.watch)


def add_fidelity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fidelity", help="rung fidelity (Spearman) of one or more searches of one budget, pooled",
        description="Rank each ASHA rung's val_bpb against the final val_bpb per search and over all the "
        "searches' completed trials together (one search completes few), with a permutation p-value; writes "
        "fidelity_pooled.csv and fidelity_pooled.md.")
    p.add_argument("names", nargs="+", help="search names (same --budget-s)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the files (default: the first search's report folder)")
    _storage_arg(p)
    p.set_defaults(func=cmd_fidelity)


def cmd_fidelity(args: argparse.Namespace) -> int:
    from search.analysis.pooled import pooled_fidelity, write_pooled
    from search.analysis.report import load_study

    searches = [(settings, load_study(settings)) for settings in
                (store.load_settings(name, args.storage) for name in args.names)]
    table = pooled_fidelity(searches)
    paths = write_pooled(searches, table, args.out or store.report_dir(searches[0][0]))
    print(table.to_string(index=False))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


# Later commands append their add_* function here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_run, add_resume, add_report, add_status, add_fidelity, add_rerun_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; a wrong setting or name prints one line naming the fix and exits 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DriverFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # ConfigError/SpaceError from the space or trainer config
        if type(exc).__name__ in ("ConfigError", "SpaceError", "SizeLimitError", "ShardError", "TokenizerError"):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
