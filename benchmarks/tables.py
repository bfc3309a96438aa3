"""Markdown tables of benchmark results: trainer runs, the challenge trainer's log, and re-exports.

    python benchmarks/tables.py runs RUN_DIR... [--reference LOG]   # one row per run (its metrics.json)
    python benchmarks/tables.py exports RUN_DIR...                   # one row per RUN_DIR/exports/*.json
    python benchmarks/tables.py parity [--run RUN_DIR] [--reference LOG] ...  # our runs beside the record script's
    python benchmarks/tables.py ablation --base RUN_DIR [--run NAME SETS RUN_DIR|EXPORT_JSON] ...  # against the base

A run without metrics.json (it failed or is still running) gets a row saying so, naming its train.log.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

RUN_COLUMNS = ("run", "device", "GPUs", "steps", "ms/step", "tokens/s", "MFU", "val_bpb pre", "val_bpb round trip",
               "artifact bytes", "compile s", "peak GiB")
EXPORT_COLUMNS = ("run", "export", "val_bpb", "pre-quant", "round-trip cost", "artifact bytes", "under the limit")

# Lines of the challenge's train_gpt.py log.
REF_STEP = re.compile(r"step:(\d+)/\d+ val_loss:[\d.]+ val_bpb:([\d.]+) train_time:\d+ms step_avg:([\d.]+)ms")
REF_ROUNDTRIP = re.compile(r"final_int8_zlib_roundtrip val_loss:[\d.]+ val_bpb:([\d.]+)")
REF_BYTES = re.compile(r"Total submission size int8\+zlib: (\d+) bytes")
REF_BATCH = re.compile(r"train_batch_tokens:(\d+)")
REF_PEAK = re.compile(r"peak memory allocated: (\d+) MiB")
# Lines of the recurrence record's train_gpt.py log (recipe parity).
REC_SEED = re.compile(r"(?:^|\s)seed:(\d+)\s*$", re.M)
REC_POST_EMA = re.compile(r"DIAGNOSTIC post_ema val_loss:[\d.]+ val_bpb:([\d.]+)")
REC_ROUNDTRIP = re.compile(r"final_int6_roundtrip_exact val_loss:[\d.]+ val_bpb:([\d.]+)")
REC_BYTES = re.compile(r"Total submission size int6\+brotli: (\d+) bytes")
ABLATION_COLUMNS = ("removed", "overrides", "steps", "ms/step", "val_bpb raw", "val_bpb averaged", "val_bpb round trip",
                    "round trip - base", "artifact bytes", "bytes - base")
PARITY_COLUMNS = ("trainer", "seed", "steps", "ms/step", "tokens/s", "val_bpb pre, raw weights", "val_bpb pre, EMA",
                  "val_bpb round trip", "artifact bytes")


def markdown(columns: tuple[str, ...], rows: list[tuple]) -> str:
    """A Markdown table; numbers right-aligned."""
    head = "| " + " | ".join(columns) + " |"
    rule = "| " + " | ".join("---" if i < 2 else "---:" for i in range(len(columns))) + " |"
    return "\n".join([head, rule] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def read_metrics(run_dir: Path) -> dict | None:
    """A run's metrics.json, or None when it did not finish."""
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def unfinished(run_dir: Path) -> str:
    """What a row says of a run without metrics.json."""
    return f"no metrics.json: see {run_dir / 'train.log'}"


def raw_and_averaged(m: dict) -> tuple[float, float | None]:
    """The raw weights' val_bpb and, when the run averaged its weights, the averaged weights' one."""
    raw = m.get("val_bpb_prequant_raw")
    return (m["val_bpb_prequant"], None) if raw is None else (raw, m["val_bpb_prequant"])


def run_row(run_dir: Path) -> tuple:
    """One run's figures from its metrics.json."""
    m = read_metrics(run_dir)
    if m is None:
        return (run_dir.name, unfinished(run_dir)) + ("",) * (len(RUN_COLUMNS) - 2)
    peak = m.get("peak_mem_bytes")
    return (
        run_dir.name, m.get("device", ""), m.get("world_size", 1), f"{m['steps']:,}", f"{m['step_ms']:.1f}",
        f"{m['tokens_per_s']:,.0f}", f"{100 * m['mfu']:.1f}%" if m.get("mfu") is not None else "",
        f"{m['val_bpb_prequant']:.4f}", f"{m['val_bpb']:.4f}", f"{m['artifact_bytes']:,}",
        f"{m.get('compile_s', 0):.1f}", f"{peak / 2**30:.2f}" if peak else "",
    )


def reference_row(log: Path) -> tuple:
    """The challenge trainer's figures from its log: last validation step, round trip, bytes."""
    text = log.read_text(errors="replace")
    steps = REF_STEP.findall(text)
    if not steps:
        return (f"reference ({log.name})", "no final validation line: see the log") + ("",) * (len(RUN_COLUMNS) - 2)
    step, bpb, step_avg_ms = steps[-1]
    batch = REF_BATCH.search(text)
    tokens_per_s = int(batch.group(1)) / (float(step_avg_ms) / 1000) if batch else None
    roundtrip, size, peak = REF_ROUNDTRIP.search(text), REF_BYTES.search(text), REF_PEAK.search(text)
    return (
        f"reference ({log.name})", "", 1, f"{int(step):,}", f"{float(step_avg_ms):.1f}",
        f"{tokens_per_s:,.0f}" if tokens_per_s else "", "", bpb, roundtrip.group(1) if roundtrip else "",
        f"{int(size.group(1)):,}" if size else "", "", f"{int(peak.group(1)) / 1024:.2f}" if peak else "",
    )


def export_rows(run_dir: Path) -> list[tuple]:
    """One row per re-export JSON of a run (`trainer export`), the run as trained first."""
    rows = []
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        export = m["config"]["export"]
        label = f"as trained: quant_bits={export['quant_bits']} embedding_bits={export.get('embedding_bits', 0)}"
        rows.append((run_dir.name, label, f"{m['val_bpb']:.4f}", f"{m['val_bpb_prequant']:.4f}",
                     f"{m['val_bpb'] - m['val_bpb_prequant']:.4f}", f"{m['artifact_bytes']:,}",
                     "no" if m.get("over_limit") else "yes"))
    for path in sorted((run_dir / "exports").glob("*.json")):
        e = json.loads(path.read_text())
        rows.append((run_dir.name, " ".join(e["overrides"]) or "as trained", f"{e['val_bpb']:.4f}",
                     f"{e['val_bpb_prequant']:.4f}", f"{e['roundtrip_cost_bpb']:.4f}", f"{e['artifact_bytes']:,}",
                     "no" if e["over_limit"] else "yes"))
    if not rows:
        rows.append((run_dir.name, f"no metrics.json or exports/*.json under {run_dir}") + ("",) * 5)
    return rows


def _bpb(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""


def parity_ours(run_dir: Path) -> dict:
    """Our run's parity figures from its metrics.json (empty figures when the run did not finish)."""
    m = read_metrics(run_dir)
    if m is None:
        return {"trainer": f"ours ({run_dir.name}): {unfinished(run_dir)}"}
    raw, averaged = raw_and_averaged(m)
    return {"trainer": "ours", "seed": m["config"]["train"]["seed"], "steps": m["steps"], "step_ms": m["step_ms"],
            "tokens_per_s": m["tokens_per_s"], "raw": raw, "averaged": averaged, "roundtrip": m["val_bpb"],
            "bytes": m["artifact_bytes"]}


def parity_reference(log: Path) -> dict:
    """The record script's parity figures from its log: the last step's validation (raw weights), post-EMA, export."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    steps = REF_STEP.findall(text)
    if not steps:
        return {"trainer": f"record ({log.name}): no final validation line, see the log"}
    step, bpb, step_avg_ms = steps[-1]
    batch, seed = REF_BATCH.search(text), REC_SEED.search(text)
    found = {name: regex.search(text) for name, regex in
             (("averaged", REC_POST_EMA), ("roundtrip", REC_ROUNDTRIP), ("bytes", REC_BYTES))}
    return {"trainer": "record", "seed": int(seed.group(1)) if seed else None, "steps": int(step),
            "step_ms": float(step_avg_ms),
            "tokens_per_s": int(batch.group(1)) / (float(step_avg_ms) / 1000) if batch else None, "raw": float(bpb),
            "averaged": float(found["averaged"].group(1)) if found["averaged"] else None,
            "roundtrip": float(found["roundtrip"].group(1)) if found["roundtrip"] else None,
            "bytes": int(found["bytes"].group(1)) if found["bytes"] else None}


def parity_table(rows: list[dict]) -> str:
    """Each run's row, then each trainer's mean and ours minus the record's."""
    def line(r: dict) -> tuple:
        return (r["trainer"], r.get("seed", ""), f"{r['steps']:,}" if r.get("steps") else "",
                f"{r['step_ms']:.1f}" if r.get("step_ms") else "",
                f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "", _bpb(r.get("raw")),
                _bpb(r.get("averaged")), _bpb(r.get("roundtrip")), f"{r['bytes']:,}" if r.get("bytes") else "")

    keys = ("step_ms", "tokens_per_s", "raw", "averaged", "roundtrip")
    means = {}
    for trainer in ("ours", "record"):
        done = [r for r in rows if r["trainer"] == trainer]
        means[trainer] = {k: sum(r[k] for r in done) / len(done) for k in keys
                          if done and all(r.get(k) is not None for r in done)}
    lines = [line(r) for r in rows]
    for trainer, mean in means.items():
        if mean:
            lines.append(line({"trainer": f"**{trainer}, mean**", **mean}))
    if means["ours"] and means["record"]:
        diff = {k: means["ours"][k] - means["record"][k] for k in ("raw", "averaged", "roundtrip")
                if k in means["ours"] and k in means["record"]}
        lines.append(line({"trainer": "**ours - record**", **diff}))
    text = markdown(PARITY_COLUMNS, lines)
    if "tokens_per_s" in means["ours"] and "tokens_per_s" in means["record"]:
        text += (f"\n\nTokens per second: ours {means['ours']['tokens_per_s'] / means['record']['tokens_per_s']:.2f}x "
                 "the record script's.")
    return text


def ablation_table(base: Path, runs: list[tuple[str, str, Path]]) -> str:
    """The base run, then one row per ablation with its round trip and bytes against the base's.

    An ablation given as a re-export's JSON (export settings only) shares the base's training: its steps, ms/step
    and val_bpb before quantization are the base's, its round trip and bytes its own."""
    ref = read_metrics(base)
    lines = []
    for name, sets, path in [("nothing (base)", "", base)] + runs:
        reexport = path.suffix == ".json"
        m = _reexport_metrics(path, ref) if reexport else read_metrics(path)
        if m is None:
            missing = f"no {path.name}: see {path.with_suffix('.log')}" if reexport else unfinished(path)
            lines.append((name, sets, missing) + ("",) * 7)
            continue
        raw, averaged = raw_and_averaged(m)
        bpb_delta = f"{m['val_bpb'] - ref['val_bpb']:+.4f}" if ref else ""
        bytes_delta = f"{m['artifact_bytes'] - ref['artifact_bytes']:+,}" if ref else ""
        label = f"{name} (base's weights re-exported)" if reexport else name
        lines.append((label, f"`{sets}`" if sets else "", f"{m['steps']:,}", f"{m['step_ms']:.1f}", _bpb(raw),
                      _bpb(averaged), _bpb(m["val_bpb"]), bpb_delta, f"{m['artifact_bytes']:,}", bytes_delta))
    return markdown(ABLATION_COLUMNS, lines)


def _reexport_metrics(path: Path, base: dict | None) -> dict | None:
    """The base's metrics with a re-export's round trip and bytes, or None when either is missing."""
    if base is None or not path.is_file():
        return None
    export = json.loads(path.read_text())
    return {**base, "val_bpb": export["val_bpb"], "artifact_bytes": export["artifact_bytes"]}


def main(argv: list[str] | None = None) -> int:
    """Print the requested table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="table", required=True)
    runs = sub.add_parser("runs", help="one row per trainer run (metrics.json)")
    runs.add_argument("run_dirs", nargs="+", type=Path)
    runs.add_argument("--reference", type=Path, help="log of the challenge's train_gpt.py, shown as the first row")
    exports = sub.add_parser("exports", help="one row per re-export of each run (exports/*.json)")
    exports.add_argument("run_dirs", nargs="+", type=Path)
    parity = sub.add_parser("parity", help="our runs beside the recurrence record script's logs, with means")
    parity.add_argument("--run", dest="ours", action="append", default=[], type=Path, help="one of our run folders")
    parity.add_argument("--reference", dest="logs", action="append", default=[], type=Path,
                        help="a log of the record's train_gpt.py")
    ablation = sub.add_parser("ablation", help="each ablation run against the base run")
    ablation.add_argument("--base", type=Path, required=True, help="the base config's run folder")
    ablation.add_argument("--run", dest="runs", action="append", default=[], nargs=3,
                          metavar=("NAME", "SETS", "RUN"),
                          help="an ablation: its name, overrides and run folder (or a re-export's JSON)")
    args = parser.parse_args(argv)
    if args.table == "ablation":
        print(ablation_table(args.base, [(n, s, Path(d)) for n, s, d in args.runs]))
    elif args.table == "parity":
        print(parity_table([parity_ours(d) for d in args.ours] + [parity_reference(log) for log in args.logs]))
    elif args.table == "runs":
        rows = [reference_row(args.reference)] if args.reference and args.reference.is_file() else []
        print(markdown(RUN_COLUMNS, rows + [run_row(d) for d in args.run_dirs]))
    else:
        print(markdown(EXPORT_COLUMNS, [row for d in args.run_dirs for row in export_rows(d)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
