"""Pareto frontier of (val_bpb, artifact_bytes), both minimized: a pure function, no I/O."""
from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b in every objective and better in at least one (minimization)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates; identical points are all kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best_y = float("inf")  # lowest second objective among points with a strictly smaller first one
    i = 0
    while i < len(order):
        # Points sharing the first objective: only those at the group's lowest second objective can survive,
        # and only if no point with a smaller first objective is as good or better in the second.
        x = points[order[i]][0]
        j = i
        while j < len(order) and points[order[j]][0] == x:
            j += 1
        group = order[i:j]
        group_min = min(points[k][1] for k in group)
        if group_min < best_y:
            front.extend(k for k in group if points[k][1] == group_min)
            best_y = group_min
        i = j
    return sorted(front)
