"""Repeat-pattern families expanded to a virtual-layer order (pure functions, no I/O)."""
from __future__ import annotations


class PatternError(ValueError):
    """A pattern's parameters do not describe a valid order; the message names the parameter and the fix."""


# Parameters each family takes, in the order they are chosen (later ones may depend on earlier ones).
FAMILY_PARAMS: dict[str, tuple[str, ...]] = {
    "none": (),
    "cycle": ("repeats",),
    "loop_middle": ("start", "end", "repeats"),
    "tie_tail": ("repeats", "exit_blocks"),
    "explicit": ("order",),
}


def none(n: int) -> tuple[int, ...]:
    """Each of the n blocks once, in order."""
    _check_blocks(n)
    return tuple(range(n))


def cycle(n: int, repeats: int) -> tuple[int, ...]:
    """All n blocks, `repeats` times over: [0..n-1] * repeats."""
    _check_blocks(n)
    _check(repeats >= 2, "repeats", f"is {repeats}; a cycle needs at least 2 passes (use pattern none for one)")
    return tuple(range(n)) * repeats


def loop_middle(n: int, start: int, end: int, repeats: int) -> tuple[int, ...]:
    """Blocks start..end run `repeats` times inside the stack: n=11,4,5,2 -> 0..5,4,5,6..10."""
    _check_blocks(n)
    _check(0 <= start < n, "start", f"is block {start} but there are only blocks 0..{n - 1}")
    _check(start <= end < n, "end", f"is block {end}; it must lie in start..{n - 1} = {start}..{n - 1}")
    _check(repeats >= 2, "repeats", f"is {repeats}; a loop needs at least 2 passes (use pattern none for one)")
    loop = tuple(range(start, end + 1))
    return tuple(range(end + 1)) + loop * (repeats - 1) + tuple(range(end + 1, n))


def tie_tail(n: int, repeats: int, exit_blocks: int = 0) -> tuple[int, ...]:
    """One block fills `repeats` consecutive positions near the end, followed by `exit_blocks` unique blocks.

    n=11, repeats=5, exit_blocks=1 -> 0..8, 9,9,9,9,9, 10 (15 virtual layers).
    """
    _check_blocks(n)
    _check(repeats >= 2, "repeats", f"is {repeats}; the tied block must fill at least 2 positions")
    _check(
        0 <= exit_blocks <= n - 1,
        "exit_blocks",
        f"is {exit_blocks}; with {n} blocks at most {n - 1} can follow the tied block",
    )
    tied = n - 1 - exit_blocks
    return tuple(range(tied)) + (tied,) * repeats + tuple(range(tied + 1, n))


def explicit(order: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A literal order; it must use every block 0..max exactly as numbered (no gaps)."""
    order = tuple(order)
    _check(len(order) > 0, "order", "is empty; list the block index of every virtual layer")
    _check(all(isinstance(b, int) and b >= 0 for b in order), "order", f"{list(order)} must hold block indices >= 0")
    missing = sorted(set(range(max(order) + 1)) - set(order))
    _check(
        not missing,
        "order",
        f"{list(order)} refers to block {max(order)} but never runs blocks {missing}; "
        f"blocks are numbered 0..n-1, so renumber them without gaps",
    )
    return order


def blocks_of_explicit(order: tuple[int, ...]) -> int:
    """Unique-block count implied by an explicit order."""
    return max(order) + 1


def expand(family: str, n: int, params: dict[str, int]) -> tuple[int, ...]:
    """Virtual-layer order of one family given the unique-block count and its parameters."""
    if family not in FAMILY_PARAMS:
        raise PatternError(f"unknown pattern '{family}'; use one of {sorted(FAMILY_PARAMS)}")
    if family == "explicit":
        return explicit(params["order"])
    return globals()[family](n, **params)


# How repeats get MLPs of their own (the untie_mlp axis): none and full are model.untie_mlp's own policies;
# repeats lists every position whose block ran before (as the record writes it), first_repeat only each block's
# second run (the same as repeats when no block runs more than twice).
UNTIE_CHOICES = ("none", "full", "repeats", "first_repeat")


def untie_value(choice: str, order: tuple[int, ...]) -> str | tuple[int, ...]:
    """model.untie_mlp of an untie choice for this order: none/full as they are, else the positions it unties."""
    if choice in ("none", "full"):
        return choice
    if choice not in UNTIE_CHOICES:
        raise PatternError(f"untie_mlp '{choice}' is not one of {UNTIE_CHOICES}")
    runs: dict[int, int] = {}
    positions = []
    for position, block in enumerate(order):
        runs[block] = runs.get(block, 0) + 1
        if runs[block] == 2 or (runs[block] > 2 and choice == "repeats"):
            positions.append(position)
    return tuple(positions)


def has_repeats(order: tuple[int, ...]) -> bool:
    """True when some block runs more than once (only then can MLPs be untied)."""
    return len(set(order)) < len(order)


def _check_blocks(n: int) -> None:
    _check(n >= 1, "unique_blocks", f"is {n}; a model needs at least 1 block")


def _check(ok: bool, param: str, problem: str) -> None:
    if not ok:
        raise PatternError(f"{param} {problem}")
