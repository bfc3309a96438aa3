"""The options one decision of a space offers: a list of values, an integer range or a stepped float range."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Float range values are rounded to this many decimals, so 0.1 * 3 is the 0.3 a YAML file writes.
FLOAT_DECIMALS = 12


@dataclass(frozen=True)
class Categorical:
    """Pick one of these values."""

    values: tuple

    def canonical(self, value: Any) -> Any:
        """The offered value equal to `value` (true is not 1), or None if it is not offered."""
        return next((v for v in self.values if v == value and isinstance(v, bool) == isinstance(value, bool)), None)


@dataclass(frozen=True)
class IntRange:
    """Pick an integer in lo..hi (inclusive)."""

    lo: int
    hi: int

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(range(self.lo, self.hi + 1))

    def canonical(self, value: Any) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi
        return value if ok else None


@dataclass(frozen=True)
class FloatRange:
    """Pick a float in lo, lo + step, ..., hi."""

    lo: float
    hi: float
    step: float

    @property
    def values(self) -> tuple[float, ...]:
        count = round((self.hi - self.lo) / self.step) + 1
        return tuple(round(self.lo + i * self.step, FLOAT_DECIMALS) for i in range(count))

    def canonical(self, value: Any) -> float | None:
        """The grid value within rounding of `value` (Optuna's lo + k * step need not be the rounded one)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return next((v for v in self.values if math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-12)), None)


Options = Categorical | IntRange | FloatRange
