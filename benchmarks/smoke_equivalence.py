"""Do two versions of the trainer train the same? Smoke-train every preset with each and compare exactly.

    python benchmarks/smoke_equivalence.py --data DIR --tokenizer MODEL A [B] [--save FILE]

A and B are each a git revision (a commit, branch or tag: its committed files are exported and run), `worktree`
(the checkout's files as they are now) or a JSON file this script saved. For every spaces/presets/*.yaml, each
version runs `python -m trainer train --smoke` on the CPU (one thread, the config's own seed) and the script
records the per-step losses of train.log and the final val_bpb, val_loss and their pre-quantization values from
metrics.json. With two versions it compares them exactly and exits 1 on any difference; --save writes the
last version's results, so a later comparison can skip training it again.

The smoke budget is 20 s of wallclock, and the warmdown also counts in remaining seconds: on a busy CPU a
big preset stops early or decays its LR sooner, so two runs of one version differ. By default the trainer
therefore runs on a virtual clock (time.perf_counter advances 1 us per call), where neither ever binds and
every version trains exactly train.max_steps; --real-clock runs it as the command line does.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from trainer.metrics import RunMetrics  # noqa: E402  (needs the repository on the path)

WORKTREE = "worktree"
STEP_LINE = re.compile(r"\] step (\d+) loss (\S+) ")
FINAL_KEYS = ("val_bpb", "val_loss", "val_bpb_prequant", "val_loss_prequant", "steps")
# `python -m trainer` with time.perf_counter replaced by a counter: 1 us per call.
VIRTUAL_CLOCK = ("import itertools, sys, time; ticks = itertools.count(); "
                 "time.perf_counter = lambda: next(ticks) * 1e-6; "
                 "from trainer.cli import main; sys.exit(main(sys.argv[1:]))")


def export_revision(revision: str, into: Path) -> Path:
    """The committed files of `revision`, written under `into` (git archive)."""
    tar = subprocess.run(["git", "archive", "--format=tar", revision], cwd=REPO_ROOT, capture_output=True)
    if tar.returncode != 0:
        raise SystemExit(f"error: {revision!r} is not a git revision of {REPO_ROOT} "
                         f"({tar.stderr.decode().strip()}); pass a commit, a branch, '{WORKTREE}' or a saved .json")
    with tarfile.open(fileobj=BytesIO(tar.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


def smoke_run(tree: Path, preset: Path, data: Path, tokenizer: Path, out: Path, real_clock: bool) -> dict:
    """One preset's smoke training with the trainer of `tree`: per-step losses and the final figures."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    trainer = ["-m", "trainer"] if real_clock else ["-c", VIRTUAL_CLOCK]
    cmd = [sys.executable, *trainer, "train", "--smoke", "--config", str(preset), "--data", str(data),
           "--tokenizer", str(tokenizer), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {preset.name} failed with the trainer of {tree}:\n{proc.stderr[-2000:]}")
    losses = {int(m.group(1)): m.group(2) for m in map(STEP_LINE.search, (out / "train.log").read_text().splitlines())
              if m}
    metrics = RunMetrics.read(out / "metrics.json").to_dict()
    return {"losses": [losses[s] for s in sorted(losses)], **{k: metrics[k] for k in FINAL_KEYS}}


def results_of(source: str, data: Path, tokenizer: Path, scratch: Path, real_clock: bool) -> dict:
    """{preset name: smoke results} of one version: run, or read from a saved JSON."""
    if source.endswith(".json"):
        return json.loads(Path(source).read_text())["presets"]
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", source)
    tree = REPO_ROOT if source == WORKTREE else export_revision(source, scratch / slug / "tree")
    results = {}
    for preset in sorted((tree / "spaces" / "presets").glob("*.yaml")):
        print(f"[smoke] {source}: {preset.stem}", flush=True)
        results[preset.stem] = smoke_run(tree, preset, data, tokenizer, scratch / slug / preset.stem, real_clock)
    return results


def differences(a: dict, b: dict) -> list[str]:
    """One line per preset or figure that differs between two versions' results."""
    lines = [f"{name}: only in one version" for name in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        for key in ("losses", *FINAL_KEYS):
            if a[name][key] != b[name][key]:
                lines.append(f"{name}: {key} {a[name][key]} != {b[name][key]}")
    return lines


def main() -> int:
    """Run or read each version, compare, print the verdict; 1 if they differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", metavar="VERSION",
                        help=f"one or two of: a git revision, '{WORKTREE}', a .json this script saved")
    parser.add_argument("--data", type=Path, required=True, help="folder with fineweb_train_*.bin and a val shard")
    parser.add_argument("--tokenizer", type=Path, required=True, help="SentencePiece .model of the shards")
    parser.add_argument("--save", type=Path, help="write the last version's results to this JSON file")
    parser.add_argument("--real-clock", action="store_true",
                        help="run on the wallclock, as the command line does (results then depend on the CPU's load)")
    args = parser.parse_args()
    if len(args.versions) > 2:
        parser.error("pass one version (to record it) or two (to compare them)")
    with tempfile.TemporaryDirectory(prefix="smoke_equivalence_") as scratch:
        results = [results_of(v, args.data.resolve(), args.tokenizer.resolve(), Path(scratch), args.real_clock)
                   for v in args.versions]
    if args.save:
        saved = {"version": args.versions[-1], "real_clock": args.real_clock, "presets": results[-1]}
        args.save.write_text(json.dumps(saved, indent=2) + "\n")
        print(f"[smoke] wrote {args.save}")
    if len(results) == 1:
        return 0
    diff = differences(*results)
    for line in diff:
        print(f"DIFFERENT {line}")
    print(f"[smoke] {len(results[0])} presets: " + ("identical losses and val_bpb" if not diff else
                                                     f"{len(diff)} difference(s)"))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
