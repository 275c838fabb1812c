"""Rates with their uncertainty: every rate erase reports carries its sample size and a 95% Wilson interval.

The Wilson score interval (Wilson 1927) stays inside [0, 1] and keeps sensible width at 0/n and n/n, where the
normal approximation collapses to a zero-width interval: 0 of 32 flagged is "at most ~11%", not "exactly 0%".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for k successes in n trials; (0, 1) when n == 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """k of n, with its 95% interval. `as_record()` is the one format records, summaries and reports use."""

    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def as_record(self) -> dict[str, float | int | list[float]]:
        lo, hi = self.ci95
        return {"rate": self.rate, "k": self.k, "n": self.n, "ci95": [lo, hi]}

    def __str__(self) -> str:
        """"3.1% [0.6, 15.7] (n=32)": the form every table prints."""
        lo, hi = self.ci95
        return f"{100 * self.rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={self.n})"

    def differs_from(self, other: "Rate") -> bool:
        """True only when the two intervals do not overlap: a difference inside the intervals is not a result."""
        (a_lo, a_hi), (b_lo, b_hi) = self.ci95, other.ci95
        return a_hi < b_lo or b_hi < a_lo
