"""Rebuild run directories (metrics.json, + model.ptz when kept) from train logs, for a refit of the size model.

A run whose folder was lost (only its log kept, or a timeout after export) can still be fitted: the log holds the
run's config (first line) and its measured sizes (last line), which is all the refit reads. The logs are taken to
be of H100 runs of artifact format 1.
Usage: python benchmarks/runs_from_logs.py OUT_DIR LOG[=PTZ] [LOG[=PTZ] ...]
"""
import json
import re
import shutil
import sys
from pathlib import Path

from trainer import artifact
from trainer.run_config import from_dict

SIZES = re.compile(r"artifact_bytes ([\d,]+) \(model ([\d,]+) \+ code ([\d,]+)\)")
DONE = re.compile(r"training done: (\d+) steps, ([\d.]+)s")


def rebuild(log: Path, ptz: Path | None, out_root: Path) -> Path:
    lines = log.read_text().splitlines()
    config = json.loads(lines[0].split("] config ", 1)[1])
    sizes = [m for m in map(SIZES.search, lines) if m]
    if not sizes:
        raise SystemExit(f"{log}: no artifact line (the run stopped before export); leave it out")
    sizes = sizes[-1]
    done = next(m for m in map(DONE.search, lines) if m)
    cfg = from_dict(config, where=str(log))
    model_bytes = int(sizes.group(2).replace(",", ""))
    metrics = {
        "config": config,
        "model_bytes": model_bytes,
        "code_bytes": int(sizes.group(3).replace(",", "")),
        "payload_bytes": artifact.payload_bytes(cfg, recorded=config, format_version=1),  # these runs wrote format 1
        "steps": int(done.group(1)),
        "train_s": float(done.group(2)),
        "device": "NVIDIA H100 80GB HBM3",
        "reconstructed_from": str(log),
    }
    run_dir = out_root / f"{log.parent.name}_{log.stem}"  # the log's folder + run name: unique across folders
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if ptz is not None:
        if ptz.stat().st_size != model_bytes:
            raise SystemExit(f"{ptz}: {ptz.stat().st_size} bytes but the log says {model_bytes}")
        shutil.copyfile(ptz, run_dir / "model.ptz")
    return run_dir


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    out = Path(sys.argv[1])
    for arg in sys.argv[2:]:
        log, _, ptz = arg.partition("=")
        print(rebuild(Path(log), Path(ptz) if ptz else None, out))
