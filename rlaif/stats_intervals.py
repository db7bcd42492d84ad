"""Intervals for a proportion (k successes of n), and how many observations an interval needs.

- :func:`wilson`: the Wilson score interval (Wilson 1927; Brown, Cai and DasGupta 2001 recommend
  it over the Wald interval, whose coverage collapses near 0 and 1 and at small n):

      centre = (p + z^2 / 2n) / (1 + z^2 / n)
      half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2),     p = k / n

- :func:`ratings_needed`: the smallest n at which the Wilson interval of a proportion ``p``
  has half-width at most ``half_width`` (found by bisection on the formula above; the
  textbook z^2 p (1 - p) / E^2, which ignores the z^2/n terms, gives 384.2 for p = 0.5 and
  E = 0.05, the Wilson interval gets there at 381).

Pure Python, no dependencies: the review server imports it.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: a two-sided 95% interval."""


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | tuple[None, None]:
    """The Wilson score interval of k successes in n trials; (None, None) for n = 0."""
    if n <= 0:
        return None, None
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_half_width(p: float, n: int, z: float = Z95) -> float:
    """Half-width of the Wilson interval at proportion ``p`` after ``n`` observations."""
    z2 = z * z
    return z / (1.0 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))


def ratings_needed(p: float, half_width: float, z: float = Z95) -> int:
    """The smallest n whose Wilson interval at proportion ``p`` is at most +-``half_width`` wide."""
    if not 0 < half_width < 0.5:
        raise ValueError(f"half_width must be in (0, 0.5), got {half_width}")
    p = min(max(p, 0.0), 1.0)
    hi = 1
    while wilson_half_width(p, hi, z) > half_width:
        hi *= 2
    lo = max(1, hi // 2)
    while lo < hi:  # the half-width falls as n grows: bisect for the first n that is narrow enough
        mid = (lo + hi) // 2
        if wilson_half_width(p, mid, z) <= half_width:
            hi = mid
        else:
            lo = mid + 1
    return lo


def planning_proportion(lo: float | None, hi: float | None) -> float:
    """The proportion to plan with: the value inside the current interval nearest 0.5 (0.5 itself
    before any data, or while the interval holds it). Planning with the point estimate would
    promise too few observations after a lucky start (3 of 3 agreeing plans as if p were 1)."""
    if lo is None or hi is None:
        return 0.5
    return min(max(0.5, lo), hi)
