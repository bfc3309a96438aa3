"""Command line: show / check / sample a space, from-influence to write one; synth / calibrate / accuracy for the size model."""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

from trainer.model_config import ConfigError


def _summary(cfg) -> str:
    from trainer.quant import export_label

    m, e = cfg.model, cfg.export
    order = ",".join(map(str, m.schedule_order))
    return (f"blocks={m.unique_blocks} order=[{order}] untie={m.untie_mlp} d={m.model_dim} h={m.num_heads} "
            f"kv={m.num_kv_heads} mlp={m.mlp_mult:g} depth={m.depth_signal} {export_label(e)}")


def cmd_show(args: argparse.Namespace) -> int:
    from spaces.space import AXES, load_space

    space = load_space(args.file, code_bytes=args.code_bytes)
    print(f"space {space.name} ({space.path})")
    if space.description:
        print(f"  {space.description}")
    print(f"  unique_blocks: {list(space.unique_blocks)}")
    for p in space.patterns:
        if p.family == "explicit":
            print(f"  pattern explicit: {[list(o) for o in p.orders]}")
            continue
        params = ", ".join(f"{q.name}={list(q.choices) if q.choices else f'{q.lo}..{q.hi}'}" for q in p.params)
        blocks = f" unique_blocks={list(p.unique_blocks)}" if p.unique_blocks else ""
        print(f"  pattern {p.family}:{blocks} {params}")
    for axis in (a for a in AXES if a not in ("unique_blocks", "width")):  # those two are printed their own way
        if getattr(space, axis):
            print(f"  {axis}: {list(getattr(space, axis))}")
    if space.widths:
        print(f"  width: {[w.label for w in space.widths]}")
    for knob in space.knobs:
        print(f"  {knob.name}: {knob.describe()}")
    sys.stdout.flush()
    artifacts, size = _distinct_artifacts(space)
    workers = max(1, min(os.cpu_count() or 1, len(artifacts) // 500))
    progress(f"{size:,} configs build {len(artifacts):,} distinct artifacts; predicting their sizes on {workers} "
             "process(es)")
    fitting = 0
    low = high = None
    for (fits, size_bytes), (_, points) in zip(_predictions(space, artifacts, workers), artifacts):
        fitting += points * fits
        low = size_bytes if low is None else min(low, size_bytes)
        high = size_bytes if high is None else max(high, size_bytes)
    limit = int((space.base.get("export") or {}).get("limit_bytes", 16_000_000))
    print(f"size: {size:,} configs; {fitting:,} predicted to fit under {limit:,} bytes (with safety margin)")
    print(f"predicted artifact bytes: {low or 0:,} .. {high or 0:,}")
    return 0


def progress(message: str) -> None:
    """A progress line on stderr (stdout keeps only the result)."""
    print(f"[spaces] {message}", file=sys.stderr, flush=True)


PROGRESS_EVERY_S = 15.0


def _distinct_artifacts(space) -> tuple[list[tuple[dict, int]], int]:
    """([(an assignment, how many points build its artifact)], points): one walk of the space. Points differing
    only in train knobs build the same artifact, so each is predicted once."""
    counts: dict[str, list] = {}
    size, last = 0, time.monotonic()
    for assignment in space.assignments():
        key = repr([(name, value) for name, value in assignment.items() if not name.startswith("train.")])
        entry = counts.setdefault(key, [assignment, 0])
        entry[1] += 1
        size += 1
        if time.monotonic() - last > PROGRESS_EVERY_S:
            last = time.monotonic()
            progress(f"{size:,} configs walked, {len(counts):,} distinct artifacts so far")
    return [(assignment, points) for assignment, points in counts.values()], size


_SHOWN = None  # the space being shown, inherited by forked prediction workers


def _predict_one(assignment: dict) -> tuple[bool, int]:
    prediction = _SHOWN.predict(_SHOWN.build(assignment))
    return prediction.fits, prediction.predicted_artifact_bytes


def _predictions(space, artifacts: list[tuple[dict, int]], workers: int):
    """(fits, predicted bytes) of each artifact, in order, from `workers` forked processes; progress on stderr."""
    global _SHOWN
    _SHOWN = space
    last = time.monotonic()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for done, result in enumerate(pool.imap(_predict_one, (a for a, _ in artifacts), chunksize=64), 1):
            if time.monotonic() - last > PROGRESS_EVERY_S:
                last = time.monotonic()
                progress(f"{done:,} of {len(artifacts):,} artifacts predicted ({100 * done / len(artifacts):.0f}%)")
            yield result


def cmd_check(args: argparse.Namespace) -> int:
    from spaces.space import load_space

    progress(f"checking {args.file}: every pattern branch, and that some config fits")
    space = load_space(args.file, code_bytes=args.code_bytes)
    progress("counting its points")
    print(f"{space.path}: OK ({space.size():,} configs)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from spaces.space import load_space

    space = load_space(args.file, code_bytes=args.code_bytes)
    for cfg in space.sample(args.n, seed=args.seed):
        p = space.predict(cfg)
        print(f"{p.predicted_artifact_bytes:>12,} bytes (headroom {p.margin_bytes:+,})  {_summary(cfg)}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from trainer.sizing.synthetic import calibration_configs, write_run

    runs = calibration_configs(quick=args.quick)
    for i, (name, cfg, distribution) in enumerate(runs):
        if i % args.shards != args.shard or (args.distribution and distribution not in args.distribution):
            continue
        metrics = write_run(cfg, Path(args.out_dir) / name, distribution, seed=args.seed + i)
        print(f"{name}: payload {metrics['payload_bytes']:,} -> model {metrics['model_bytes']:,} bytes", flush=True)
    return 0


def _read_runs(dirs: list[str]):
    from trainer.sizing.calibration import read_run

    return [read_run(d) for d in dirs]


def _default_prior(path: Path, load):
    """The shipped calibration as the prior, or None if absent or in an older format (fit() says if one is needed)."""
    try:
        return load(path) if path.is_file() else None
    except ConfigError:
        return None


def cmd_calibrate(args: argparse.Namespace) -> int:
    from trainer.sizing.calibration import accuracy_table, config_out_from_provenance, fit, write_calibration
    from trainer.sizing.size_model import CALIBRATION_PATH, load_calibration

    runs = _read_runs(args.run_dirs)
    prior = load_calibration(args.prior) if args.prior else _default_prior(CALIBRATION_PATH, load_calibration)
    calibration = fit(runs, prior=prior)
    out = Path(args.out) if args.out else CALIBRATION_PATH
    write_calibration(calibration, out)
    print(accuracy_table(runs, calibration, config_out_from_provenance(calibration)))
    print(f"wrote {out}" + (" (PROVISIONAL: synthetic runs)" if calibration.provenance["provisional"] else ""))
    return 0


def cmd_accuracy(args: argparse.Namespace) -> int:
    from trainer.sizing.calibration import accuracy_table, config_out_from_provenance
    from trainer.sizing.size_model import load_calibration

    calibration = load_calibration(args.calibration)
    print(accuracy_table(_read_runs(args.run_dirs), calibration, config_out_from_provenance(calibration)))
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,2,3") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,3")
    return values


def cmd_from_influence(args: argparse.Namespace) -> int:
    from spaces.from_influence import from_influence

    if args.top < 1:
        raise ConfigError(f"--top {args.top}: pass at least 1")
    for line in from_influence(args.report, args.base, args.out, args.top, args.lengths, args.repeats):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `python -m spaces` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m spaces", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def space_cmd(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("file", help="space YAML, e.g. spaces/default.yaml")
        p.add_argument("--code-bytes", type=int, default=None,
                       help="fixed code-byte figure instead of measuring the trainer sources")
        p.set_defaults(func=func)
        return p

    space_cmd("show", "print the space, its size, how many configs fit and the predicted-size range", cmd_show)
    space_cmd("check", "validate a space file (exit 0 if valid, 1 with the problem otherwise)", cmd_check)
    p = space_cmd("sample", "print n feasible configs with predicted bytes", cmd_sample)
    p.add_argument("-n", type=int, default=5, help="how many configs (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = sub.add_parser("from-influence", help="a space looping the least influential blocks of a trained run",
                       description="write a space whose loops are explicit orders over the K contiguous runs of "
                       "middle blocks with the lowest mean Block Influence (`python -m trainer influence`); the "
                       "base space's other axes, knobs and base are kept")
    p.add_argument("report", help="influence.json, or the run folder holding it")
    p.add_argument("--base", required=True, help="space file to take everything but the patterns from, "
                   "e.g. spaces/record.yaml")
    p.add_argument("--out", required=True, help="space file to write")
    p.add_argument("--top", type=int, default=3, help="how many runs of blocks to loop (default 3)")
    p.add_argument("--lengths", type=_int_list, default=(1, 2, 3), help="run lengths in blocks (default 1,2,3)")
    p.add_argument("--repeats", type=_int_list, default=None,
                   help="passes of each loop (default: the base's loop_middle repeats, else 2)")
    p.set_defaults(func=cmd_from_influence)

    p = sub.add_parser("synth", help="write synthetic run dirs for a PROVISIONAL calibration",
                       description="write synthetic-weight run dirs (metrics.json + model.ptz) for a provisional calibration")
    p.add_argument("out_dir", help="directory to create run dirs in")
    p.add_argument("--quick", action="store_true", help="only the first two shapes (fast)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--distribution", action="append", default=None,
                   help="only runs of this weight distribution (repeatable; default all)")
    p.add_argument("--shard", type=int, default=0, help="this worker's index (run several in parallel)")
    p.add_argument("--shards", type=int, default=1, help="number of parallel workers")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("calibrate", help="fit the size model to run dirs and write the calibration JSON",
                       description="fit the size model to RUN_DIRs (metrics.json, + model.ptz when kept) and write the calibration")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output JSON (default trainer/sizing/size_calibration.json)")
    p.add_argument("--prior", default=None,
                   help="calibration to carry unfitted coefficients from (default trainer/sizing/size_calibration.json)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("accuracy", help="Markdown table of predicted vs measured bytes per run",
                       description="print predicted vs measured compressed bytes and %% error per RUN_DIR")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--calibration", default=None, help="calibration JSON (default trainer/sizing/size_calibration.json)")
    p.set_defaults(func=cmd_accuracy)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (1 with the message on a config or space error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
