"""`python -m trainer`: train a config, or manage data shards."""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from trainer import run_config as config_mod


def add_data_arguments(p: argparse.ArgumentParser, data_help: str, required: bool = True) -> None:
    """--data, --tokenizer and --device, as every command that reads the shards takes them."""
    p.add_argument("--data", type=Path, required=required, help=data_help)
    p.add_argument("--tokenizer", type=Path, required=required, help="SentencePiece .model the shards were made with")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one config, evaluate val_bpb, export the artifact",
        description="Train one config within its wallclock budget, evaluate the whole val split before and "
        "after the quantization round trip, and write metrics.json, model.ptz and train.log to --out.",
    )
    p.add_argument("--config", type=Path, help="YAML or TOML run config (sections model/train/export)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.budget_s=180 (repeatable)")
    add_data_arguments(p, "folder with fineweb_train_*.bin and fineweb_val_*.bin (with --smoke, optional: the "
                       "built-in smoke corpus)", required=False)
    p.add_argument("--out", type=Path, required=True, help="output folder for metrics.json, model.ptz, train.log")
    p.add_argument("--smoke", action="store_true",
                   help="same code path, tiny training on the CPU (seconds): checks any config without a GPU; "
                   "without --data/--tokenizer it trains on a small corpus built here on first use (no network)")
    p.add_argument("--save-weights", action="store_true",
                   help="also write the trained float weights (weights.pt) to --out, for `trainer export`")
    p.add_argument("--tensorboard", type=Path, metavar="DIR",
                   help="also write the training curves (loss, LR scale, tokens/s, final val_bpb) as TensorBoard "
                   "event files to DIR, as training goes: `tensorboard --logdir DIR`")
    p.add_argument("--share-device", action="store_true",
                   help="take turns on this machine's device with other --share-device runs and search trials: "
                   "start up and compile beside the run that trains, then train and evaluate alone, and hand the "
                   "device on while the artifact compresses; until its turn a run may use half the GPU's memory")


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="re-export a finished run under other export settings and score the round trip",
        description="Quantize and compress a run's saved float weights (weights.pt) with its config's export "
        "settings changed by --set, evaluate the whole val split on the weights read back, and write the "
        "artifact and a JSON of its val_bpb and bytes (default: RUN_DIR/exports/<settings>.ptz/.json). "
        "Training never reads the export settings, so this is what training with them would have given.",
    )
    p.add_argument("run_dir", type=Path, help="--out folder of a finished `trainer train --save-weights` run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="export.KEY=VALUE",
                   help="change one export setting, e.g. --set export.embedding_bits=8 (repeatable)")
    add_data_arguments(p, "folder with the run's fineweb_val_*.bin (and fineweb_train_*.bin for export.gptq)")
    p.add_argument("--out", type=Path, help="artifact path (default: RUN_DIR/exports/<settings>.ptz)")
    p.add_argument("--share-device", action="store_true",
                   help="take turns on this machine's device with `trainer train --share-device` runs and search "
                   "trials: wait for the device, export and evaluate alone, hand it on while the artifact compresses")


def add_influence_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "influence",
        help="Block Influence: how much each virtual layer of a finished run changes the residual stream",
        description="Run val tokens through a finished run's model (weights.pt, else model.ptz) and report, per "
        "virtual layer, 1 - cosine similarity of the stream into and out of it, averaged over tokens. Writes "
        "influence.json, influence.csv and influence.md (default: into RUN_DIR).",
    )
    p.add_argument("run_dir", type=Path, help="--out folder of a finished `trainer train` run")
    add_data_arguments(p, "folder with the run's fineweb_val_*.bin")
    p.add_argument("--tokens", type=int, default=65_536, help="val tokens to run (default 65,536)")
    p.add_argument("--out", type=Path, help="folder for the report (default: RUN_DIR)")


def run_influence(args: argparse.Namespace) -> int:
    from trainer.influence import describe, influence_report

    if args.tokens < 1:
        raise config_mod.ConfigError(f"--tokens {args.tokens}: pass a positive number of val tokens")
    result = influence_report(args.run_dir, args.data, args.tokenizer, args.tokens, args.out, args.device)
    print(describe(result))
    print(f"wrote influence.json, .csv and .md to {args.out or args.run_dir}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from trainer.reexport import describe, reexport

    with _lease(args.share_device, args.device) as lease:
        print(describe(reexport(args.run_dir, args.overrides, args.data, args.tokenizer, args.out, args.device, lease)))
    return 0


def run_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from trainer import tensorboard_log
    from trainer.train import train

    if args.tensorboard is not None and tensorboard_log.missing_package():
        raise config_mod.ConfigError(f"--tensorboard: {tensorboard_log.missing_package()}, or leave --tensorboard out")
    cfg = config_mod.load(args.config, args.overrides)
    device = args.device
    data, tokenizer = args.data, args.tokenizer
    if args.smoke:
        cfg = config_mod.smoke_version(cfg)
        device = device or "cpu"
        if data is None and tokenizer is None:
            from trainer.data.smoke import smoke_data

            found = smoke_data()
            data, tokenizer = found.data_dir, found.tokenizer
    if data is None or tokenizer is None:
        raise config_mod.ConfigError("train: pass both --data and --tokenizer (or --smoke alone, for the built-in "
                                     "smoke corpus)")
    with (tensorboard_log.TensorBoardHooks(args.tensorboard) if args.tensorboard else nullcontext()) as curves, \
            _turns(args.share_device, device, curves) as hooks:
        metrics = train(cfg, data, tokenizer, args.out, hooks=hooks, device=device, save_weights=args.save_weights)
        if curves is not None:
            curves.finished(metrics)
    rank, distributed = 0, dist.is_initialized()
    if distributed:
        # Leave the group together: a rank exiting with the group alive can abort at interpreter shutdown.
        rank = dist.get_rank()
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        keys = ("val_bpb", "val_bpb_prequant", "artifact_bytes", "over_limit", "steps", "train_s")
        summary = {k: getattr(metrics, k) for k in keys}
        print(json.dumps(summary, indent=2))
    if distributed:
        # Everything is written. A DDP rank still aborted now and then in interpreter teardown after this point
        # (SIGABRT, "terminate called without an active exception": a C++ thread of torch's), failing a finished
        # run; leaving without the teardown keeps the exit status the run earned.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


@contextmanager
def _lease(share_device: bool, device: str | None):
    """This machine's lease on the device (None without --share-device); released however the command ends."""
    if not share_device:
        yield None
        return
    from trainer.device_lease import DeviceLease, local_device_key
    from trainer.runtime import default_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise config_mod.ConfigError("--share-device takes turns on one device: leave it out of torchrun runs")
    lease = DeviceLease(local_device_key(default_device(device)))
    try:
        yield lease
    finally:
        lease.release()


@contextmanager
def _turns(share_device: bool, device: str | None, inner):
    """The run's hooks: inner (or none), taking turns on the device with --share-device."""
    with _lease(share_device, device) as lease:
        if lease is None:
            yield inner
            return
        from trainer.device_lease import TakingTurns
        from trainer.hooks import NoHooks

        yield TakingTurns(inner or NoHooks(), lease)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    add_export_command(sub)
    add_influence_command(sub)
    try:
        from trainer.data.cli import add_data_commands
    except ImportError:  # data commands are optional at import time
        add_data_commands = None
    if add_data_commands is not None:
        add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors in user input print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "export":
            return run_export(args)
        if args.command == "influence":
            return run_influence(args)
        from trainer.data.cli import run_data_command

        return run_data_command(args)
    except (config_mod.ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
