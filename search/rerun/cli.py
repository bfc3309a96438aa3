"""`python -m search rerun NAME`: rerun a search's best trial (or any trial or config file) at full scale.

The candidate comes from --best (default), --trial ID or --config FILE; the baseline from
--baseline-config, else the baseline preset (spaces/presets/baseline.yaml) if present, else the
trainer's defaults (9 blocks x 512, each once). Register with `add_rerun_command(subparsers)`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from search import smoke, store
from search.rerun.records import RecordError
from search.rerun.remote import NODE_RESOURCE
from search.rerun.run import RerunError, rerun
from search.settings import NAME_RE, SearchSettings, SettingsError, is_uri
from trainer.model_config import ConfigError
from trainer.run_config import RunConfig, TrainConfig, apply_overrides, from_dict, load

# Same defaults as `python -m search run`; a search's own data and tokenizer take precedence.
DEFAULT_DATA = "data/datasets/fineweb10B_sp1024"
DEFAULT_TOKENIZER = "data/tokenizers/fineweb_1024_bpe.model"
PRESETS_DIR = Path(__file__).resolve().parents[2] / "spaces" / "presets"
BASELINE_PRESETS = ("baseline.yaml", "baseline.yml", "baseline.toml")


@dataclass(frozen=True)
class TrialChoice:
    """A search trial picked for rerunning, with its recorded config."""

    search: SearchSettings
    number: int
    config: RunConfig
    status: str
    val_bpb: float | None
    summary: str


def _study_trials(settings: SearchSettings):
    """The search's Optuna trials and its trials table (the report's view of statuses and feasibility)."""
    from search.analysis.report import load_study, trials_table  # optuna/pandas/ray: only when a search is read

    if not (store.search_dir(settings) / store.STUDY_FILE).is_file():
        raise RerunError(f"search {settings.name}: no {store.STUDY_FILE} in {store.search_dir(settings)} yet; "
                         "it has no trials to rerun (start it, or pass --config FILE)")
    study = load_study(settings)
    return study.get_trials(deepcopy=False), trials_table(study)


def _choice(settings: SearchSettings, trial, row) -> TrialChoice:
    config = trial.user_attrs.get("run_config")
    if config is None:
        raise RerunError(f"search {settings.name} trial {trial.number} ({row['status']}: {row['reason'] or 'no reason'}) "
                         "never got a config; pick another with --trial ID (see `python -m search report`)")
    val_bpb = row["val_bpb"]
    return TrialChoice(settings, trial.number, from_dict(config, where=f"search {settings.name} trial {trial.number}"),
                       str(row["status"]), None if val_bpb is None or val_bpb != val_bpb else float(val_bpb),
                       str(row["summary"]))


def best_trial(name: str, storage: str | None = None) -> TrialChoice:
    """The feasible, completed (not pruned) trial with the lowest val_bpb."""
    from search.analysis.report import feasible_finished

    settings = store.load_settings(name, storage)
    trials, table = _study_trials(settings)
    feasible = feasible_finished(table, settings.limit_bytes)
    if feasible.empty:
        counts = table["status"].value_counts().to_dict() if len(table) else {}
        seen = ", ".join(f"{k} {v}" for k, v in counts.items()) or "no trials"
        raise RerunError(f"search {name} has no feasible finished trial yet ({seen}); let it run on "
                         f"(`python -m search status {name}`), or rerun one trial with --trial ID")
    row = feasible.sort_values(["val_bpb", "number"]).iloc[0]
    trial = next(t for t in trials if t.number == int(row["number"]))
    return _choice(settings, trial, row)


def trial_by_id(name: str, trial_id: str, storage: str | None = None) -> TrialChoice:
    """A trial by its Optuna number (the report's `number`) or its Tune trial id."""
    settings = store.load_settings(name, storage)
    trials, table = _study_trials(settings)
    if trial_id.isdigit():
        matches = table[table["number"] == int(trial_id)]
    else:
        matches = table[table["tune_trial_id"].astype(str) == trial_id]
    if matches.empty:
        known = f"numbers 0..{len(trials) - 1}" if trials else "none yet"
        raise RerunError(f"search {name} has no trial {trial_id!r} (trials: {known}); pass a number from "
                         f"`python -m search report {name}` or a Tune trial id")
    row = matches.iloc[0]
    trial = next(t for t in trials if t.number == int(row["number"]))
    return _choice(settings, trial, row)


def default_baseline(overrides: list[str]) -> tuple[RunConfig, str]:
    """The baseline preset if spaces/presets has one, else the trainer's default config; and where it came from."""
    for name in BASELINE_PRESETS:
        path = PRESETS_DIR / name
        if path.is_file():
            return load(path, overrides), str(path)
    return load(None, overrides), "trainer defaults (RunConfig())"


def _with_overrides(cfg: RunConfig, overrides: list[str], where: str) -> RunConfig:
    return from_dict(apply_overrides(cfg.to_dict(), overrides), where=where) if overrides else cfg


def add_rerun_command(sub: argparse._SubParsersAction) -> None:
    """Register `rerun` on a subparsers object (the search CLI calls this)."""
    p = sub.add_parser(
        "rerun", help="rerun the best config (and a baseline) over seeds at full scale, with significance",
        description="For each seed, train the candidate and the baseline the same way (same budget and data, DDP "
        "over the GPUs of this node via torchrun, --parallel runs at once on disjoint GPUs; on the CPU with gloo "
        "when there is no GPU), then write "
        "rerun.json, rerun.md (val_bpb mean/std, step time per GPU count, one-sided Welch tests, the record "
        "criterion) and a records-style submission folder record/. Runs with a metrics.json are kept, so "
        "running the same command again after a crash continues where it stopped.")
    p.add_argument("name", help="search name (for --best/--trial); with --config, any label for this rerun")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--best", action="store_true",
                     help="the search's feasible completed trial with the lowest val_bpb (default)")
    src.add_argument("--trial", metavar="ID", help="a trial's number (as in the report) or Tune trial id")
    src.add_argument("--config", type=Path, metavar="FILE", help="any run config YAML/TOML (no search needed)")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--baseline-config", type=Path, metavar="FILE",
                      help="baseline run config (default: spaces/presets/baseline.yaml, else trainer defaults)")
    base.add_argument("--no-baseline", action="store_true", help="train the candidate only (no significance test)")
    p.add_argument("--widest-bits", action="store_true",
                   help="export each config (candidate and baseline) at the widest quantization (8, 6, 5 bits) the "
                   "size model says fits, then its embedding at the widest width above that (float16, int8) that "
                   "still fits: training does not depend on either, a search's trial may have used fewer bits "
                   "than fit, and a config at fewer bits than fit loses val_bpb it need not")
    p.add_argument("--baseline-own-train", action="store_true",
                   help="keep the baseline file's own train section (default: the baseline trains with the "
                   "candidate's train settings, e.g. a search's --set overrides, so only the model and export differ)")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs per run, DDP on this node (default: all of them / --parallel; 0 or no CUDA: the CPU)")
    p.add_argument("--runs-per-gpu", type=int, default=1, metavar="N",
                   help="runs sharing each GPU (default 1; with --gpus 1): with 2, a run starts up and compiles "
                   "while another trains, then trains and evaluates alone and hands the GPU on while its artifact "
                   "compresses (`trainer train --share-device`), so the GPU idles less; each run still trains its "
                   "budget alone")
    p.add_argument("--parallel", type=int, default=1, metavar="P",
                   help="runs that train at once, each on its own --gpus GPUs (default 1); e.g. --gpus 1 --parallel 2 "
                   "trains the candidate and the baseline of a seed side by side on a 2-GPU node")
    p.add_argument("--cpu-procs", type=int, default=1, metavar="K", help="gloo processes per run on the CPU (default 1)")
    p.add_argument("--budget-s", type=float, default=600.0, help="training seconds per run (default 600)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per config (default 3; >= 2 for the tests)")
    p.add_argument("--seed-base", type=int, default=1337, help="first seed; the others follow (default 1337)")
    p.add_argument("--min-lead-bpb", type=float, default=0.0, metavar="X",
                   help="also test that the candidate's val_bpb is lower than the baseline's by more than X "
                   "(one-sided Welch; e.g. 0.01). Default 0: the plain tests only")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting in both configs, e.g. --set train.compile=false")
    p.add_argument("--data", default=None, help=f"shard folder (default: the search's, else {DEFAULT_DATA})")
    p.add_argument("--tokenizer", default=None,
                   help=f"SentencePiece model (default: the search's, else {DEFAULT_TOKENIZER})")
    p.add_argument("--storage", default=None,
                   help=f"folder holding searches (default: ${store.STORAGE_ENV} or {store.DEFAULT_STORAGE})")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <storage>/NAME/rerun_trial<N>, or <storage>/NAME/rerun for --config)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny training of the same configs (seconds, CPU check); without --data/--tokenizer (and no "
                   "search data) the built-in smoke corpus. A rerun of a --smoke search is one too")
    p.add_argument("--ray-address", default=None,
                   help="train each run on a GPU node of this Ray cluster ('auto': the running one) instead of here. "
                   "Default: here when this machine has the GPUs (or for --smoke / --gpus 0), else a running cluster "
                   "if one answers; without either a full-scale run is refused")
    p.add_argument("--node-resource", default=NODE_RESOURCE, metavar="NAME",
                   help=f"custom Ray resource of the GPU node type that runs one after another take whole (default "
                   f"{NODE_RESOURCE}, as cluster.yaml declares)")
    p.set_defaults(func=run_rerun_command)


def _candidate(args: argparse.Namespace) -> tuple[RunConfig, dict, SearchSettings | None, str]:
    """(candidate config, its provenance for rerun.json, the search if any, default out subfolder)."""
    if args.config is not None:
        return load(args.config, args.overrides), {"config_file": str(Path(args.config).resolve())}, None, "rerun"
    choice = trial_by_id(args.name, args.trial, args.storage) if args.trial else best_trial(args.name, args.storage)
    print(f"[rerun] search {args.name} trial {choice.number} ({choice.status}, val_bpb "
          f"{'n/a' if choice.val_bpb is None else f'{choice.val_bpb:.4f}'}): {choice.summary}", flush=True)
    source = {"search": args.name, "trial": choice.number, "trial_status": choice.status,
              "trial_val_bpb": choice.val_bpb, "summary": choice.summary}
    cfg = _with_overrides(choice.config, args.overrides, f"search {args.name} trial {choice.number} with --set")
    return cfg, source, choice.search, f"rerun_trial{choice.number}"


def widen_bits(cfg: RunConfig, source: dict, label: str = "candidate") -> RunConfig:
    """cfg exported at the widest quantization predicted to fit, then with the widest embedding that still fits;
    source records the changes for rerun.json."""
    from trainer.sizing.size_model import widest_fitting_bits, widest_fitting_embedding_bits
    from trainer.quant import width_name

    bits = widest_fitting_bits(cfg)
    if bits is None:
        raise RerunError(f"--widest-bits: the {label} is predicted over {cfg.export.limit_bytes:,} bytes at every "
                         "quantization; drop --widest-bits or pick a smaller config")
    prefix = "" if label == "candidate" else f"{label}_"  # the candidate's keys predate the baseline's
    source[f"{prefix}quant_bits_from"], source[f"{prefix}quant_bits"] = cfg.export.quant_bits, bits
    if bits != cfg.export.quant_bits:
        print(f"[rerun] --widest-bits: the {label} exports at int{bits} (it had int{cfg.export.quant_bits})",
              flush=True)
    widened = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, quant_bits=bits, embedding_bits=0))
    embedding = widest_fitting_embedding_bits(widened)
    source[f"{prefix}embedding_bits_from"], source[f"{prefix}embedding_bits"] = cfg.export.embedding_bits, embedding
    if embedding:
        print(f"[rerun] --widest-bits: the {label} exports its embedding at {width_name(embedding)}", flush=True)
    return dataclasses.replace(widened, export=dataclasses.replace(widened.export, embedding_bits=embedding))


def run_rerun_command(args: argparse.Namespace) -> int:
    """Run `rerun` from parsed arguments; a wrong input prints one line naming the fix and returns 2."""
    import torch

    try:
        if not NAME_RE.match(args.name):
            raise RerunError(f"NAME {args.name!r}: use 1-100 letters, digits, '_', '-', '.'")
        candidate, source, search, subfolder = _candidate(args)
        if args.widest_bits:
            candidate = widen_bits(candidate, source)
        if args.no_baseline:
            baseline, source["baseline"] = None, None
        elif args.baseline_config is not None:
            baseline, source["baseline"] = load(args.baseline_config, args.overrides), str(args.baseline_config)
        else:
            baseline, source["baseline"] = default_baseline(args.overrides)
        if baseline is not None and args.widest_bits:
            baseline = widen_bits(baseline, source, "baseline")
        if baseline is not None and not args.baseline_own_train:
            # Compare shapes, not recipes: a search's overrides (batch, compile, warmdown) reach the baseline too.
            baseline = dataclasses.replace(baseline, train=candidate.train)
            print(f"[rerun] both configs train with: {train_differences(candidate)}", flush=True)
        else:
            print(f"[rerun] the candidate trains with: {train_differences(candidate)}", flush=True)
            if baseline is not None:
                print(f"[rerun] the baseline trains with: {train_differences(baseline)}", flush=True)
        smoke_run = args.smoke or bool(search and search.extra.get("smoke"))
        if smoke_run and not args.smoke:
            print(f"[rerun] search {args.name} was a --smoke search: this rerun is one too", flush=True)
        if smoke_run:  # a CPU export at zstd level 22 takes longer than the smoke training itself
            candidate = _with_overrides(candidate, list(smoke.EXPORT_OVERRIDES), "--smoke")
            baseline = baseline and _with_overrides(baseline, list(smoke.EXPORT_OVERRIDES), "--smoke")
        data, tokenizer = _data_paths(args, search, smoke_run)
        out = args.out or _default_out(args, search, subfolder)
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        cpu_ok = smoke_run or args.gpus == 0
        node, gpus = None, args.gpus
        if args.ray_address or (not cpu_ok and available < (args.gpus or 1) * args.parallel):
            node, gpus = _cluster_placement(args)
        if node is None:
            gpus = args.gpus if args.gpus is not None else default_gpus(available, args.parallel)
        result = rerun(candidate, baseline, [args.seed_base + i for i in range(args.seeds)], gpus, args.budget_s,
                       Path(data), Path(tokenizer), out, name=args.name, cpu_procs=args.cpu_procs,
                       parallel=args.parallel, smoke=smoke_run, source=source, cpu_ok=cpu_ok, node=node,
                       runs_per_gpu=args.runs_per_gpu, min_lead_bpb=args.min_lead_bpb)
    except (RerunError, ConfigError, SettingsError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.md_path.read_text())
    return 0


def _data_paths(args: argparse.Namespace, search: SearchSettings | None, smoke_run: bool) -> tuple[str, str]:
    """--data/--tokenizer, else the search's, else (with --smoke) the built-in smoke corpus, else the defaults."""
    if args.data or args.tokenizer:
        return args.data or DEFAULT_DATA, args.tokenizer or DEFAULT_TOKENIZER
    if search is not None:
        return search.data_dir, search.tokenizer
    if smoke_run:
        return smoke.embedded_data(progress=lambda line: print(f"[rerun] {line}", flush=True))
    return DEFAULT_DATA, DEFAULT_TOKENIZER


def _cluster_placement(args: argparse.Namespace):
    """(NodePlacement, GPUs per run) on the Ray cluster at --ray-address (or a running one), or (None, --gpus) when
    no address was given and no cluster answers."""
    import logging
    import os

    import ray

    from search.rerun.remote import placement

    target = args.ray_address or os.environ.get("RAY_ADDRESS") or "auto"
    if target == "local":  # as for `search run`: this machine only, no cluster
        return None, args.gpus
    if not ray.is_initialized():
        try:
            ray.init(address=target, log_to_driver=True, logging_level=logging.WARNING)
        except ConnectionError:
            if args.ray_address:
                raise RerunError(f"--ray-address {target}: no Ray cluster answers there; start it (`ray up "
                                 "cluster.yaml`), or leave the flag out to train here") from None
            return None, args.gpus
    print(f"[rerun] connected to the Ray cluster at {target}", flush=True)
    return placement(args.gpus, args.parallel, args.node_resource)


def train_differences(cfg: RunConfig) -> str:
    """The train settings that differ from the trainer's defaults, as key=value (seed and budget are per run)."""
    default, own = TrainConfig().__dict__, cfg.train.__dict__
    per_run = ("seed", "budget_s")
    changed = [f"{k}={v}" for k, v in own.items() if v != default[k] and k not in per_run]
    return ", ".join(changed) or "the trainer's defaults"


def default_gpus(available: int, parallel: int) -> int:
    """GPUs per run when --gpus is not given: the node's GPUs shared evenly by the --parallel runs."""
    if available and parallel > available:
        raise RerunError(f"--parallel {parallel}: this node has {available} GPU(s); pass --parallel {available} or "
                         "fewer")
    return available // max(parallel, 1)


def _default_out(args: argparse.Namespace, search: SearchSettings | None, subfolder: str) -> Path:
    if search is not None:
        return store.search_dir(search) / subfolder
    storage = store.normalize_storage(args.storage)
    root = Path(store.DEFAULT_STORAGE).resolve() if is_uri(storage) else Path(storage)
    return root / args.name / subfolder


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m search.rerun.cli NAME ...`), same as `python -m search rerun`."""
    parser = argparse.ArgumentParser(prog="python -m search")
    add_rerun_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rerun", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
