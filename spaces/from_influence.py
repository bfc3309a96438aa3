"""A space whose loops repeat the least influential runs of blocks of a trained run (its Block Influence report).

A block whose layer changes the residual stream least (lowest BI, `python -m trainer influence`) is the cheapest to
run again: the written space keeps a base space's other axes, knobs and base, and replaces its patterns by explicit
loop orders over the K contiguous runs of middle blocks with the lowest mean BI.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from spaces import patterns
from spaces.space import SpaceError, parse_space

INFLUENCE_FILE = "influence.json"


@dataclass(frozen=True)
class Candidate:
    """Blocks start..end looped, with the mean BI of their first runs."""

    start: int
    end: int
    mean_bi: float

    @property
    def label(self) -> str:
        return f"blocks {self.start}..{self.end}" if self.end > self.start else f"block {self.start}"


def read_influence(path: Path | str) -> tuple[int, list[float]]:
    """(unique blocks, BI of each block's first run) from influence.json or the run folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / INFLUENCE_FILE
    fix = "run `python -m trainer influence RUN_DIR --data ... --tokenizer ...` first"
    if not path.is_file():
        raise SpaceError(f"{path}: no such file; {fix}")
    try:
        data = json.loads(path.read_text())
        n = int(data["unique_blocks"])
        firsts = {r["block"]: float(r["bi"]) for r in data["layers"] if r["run"] == 1}
    except (ValueError, KeyError, TypeError) as exc:
        raise SpaceError(f"{path}: not a Block Influence report ({exc!r}); {fix}") from None
    if sorted(firsts) != list(range(n)):
        raise SpaceError(f"{path}: has first runs of blocks {sorted(firsts)}, not 0..{n - 1}; {fix}")
    return n, [firsts[b] for b in range(n)]


def candidates(bis: list[float], lengths: tuple[int, ...]) -> list[Candidate]:
    """Every contiguous run of middle blocks (the first and last stay single) of these lengths, lowest mean BI
    first (ties: the earlier, then the shorter)."""
    n = len(bis)
    runs = [Candidate(s, s + k - 1, sum(bis[s:s + k]) / k) for k in lengths for s in range(1, n - k)]
    return sorted(runs, key=lambda c: (c.mean_bi, c.start, c.end))


def loop_repeats(base: dict) -> tuple[int, ...]:
    """The base space's loop_middle repeats when it lists them, else (2,): one extra pass."""
    choices = ((base.get("patterns") or {}).get("loop_middle") or {}).get("repeats")
    return tuple(choices) if isinstance(choices, list) else (2,)


def space_data(base: dict, n: int, chosen: list[Candidate], repeats: tuple[int, ...], source: str) -> dict:
    """The base space's mapping with explicit loop orders over the chosen runs in place of its patterns."""
    data = copy.deepcopy(base)
    data["name"] = f"{base.get('name', 'space')}-influence"
    data["description"] = (f"loops over the {len(chosen)} least influential runs of blocks of {source} "
                           f"({', '.join(c.label for c in chosen)}); the rest as {base.get('name', 'the base')}")
    data["unique_blocks"] = [n]
    data["patterns"] = {"explicit": [list(patterns.loop_middle(n, c.start, c.end, r)) for c in chosen for r in repeats]}
    return data


def from_influence(report: Path | str, base_path: Path | str, out: Path | str, top: int = 3,
                   lengths: tuple[int, ...] = (1, 2, 3), repeats: tuple[int, ...] | None = None) -> list[str]:
    """Write the space; return the lines saying what was chosen and why (and what was skipped)."""
    n, bis = read_influence(report)
    base_path = Path(base_path)
    base = yaml.safe_load(base_path.read_text())
    if not isinstance(base, dict):
        raise SpaceError(f"{base_path}: not a space file; pass one such as spaces/record.yaml")
    repeats = repeats or loop_repeats(base)
    lines = [f"{n} blocks; BI of each block's first run: " + ", ".join(f"{b}: {v:.4f}" for b, v in enumerate(bis))]
    chosen: list[Candidate] = []
    for c in candidates(bis, lengths):
        if len(chosen) == top:
            break
        try:  # a loop the base's settings cannot take (e.g. a lane start inside it) is skipped, with the reason
            parse_space(space_data(base, n, [c], repeats, str(report)), f"{base_path} with {c.label} looped")
        except SpaceError as exc:
            lines.append(f"skipped {c.label} (mean BI {c.mean_bi:.4f}): {exc}")
            continue
        chosen.append(c)
        lines.append(f"chose {c.label}: mean BI {c.mean_bi:.4f}, rank {len(chosen)} of the runs of "
                     f"{'/'.join(map(str, lengths))} middle blocks")
    if not chosen:
        raise SpaceError(f"{base_path}: no run of {lengths} middle blocks of {n} gives a valid space with it; "
                         "pass a base whose settings suit this run (e.g. its unique_blocks and depths)")
    data = space_data(base, n, chosen, repeats, str(report))
    parse_space(data, str(out))  # the written file loads
    header = (f"# Written by `python -m spaces from-influence {report} --base {base_path} --top {top}`: explicit loops"
              f" (passes {list(repeats)}) over\n# the least influential runs of blocks (lowest mean Block Influence),"
              f" the rest of {base_path} as it was.\n")
    header += "".join(f"#   {line}\n" for line in lines)
    Path(out).write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))
    lines.append(f"wrote {out}: {len(data['patterns']['explicit'])} loop orders")
    return lines
