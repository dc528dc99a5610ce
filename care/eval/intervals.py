"""Confidence intervals for proportions (accuracy, consistency rate).

The Wilson score interval is used rather than the normal ("Wald") interval because evaluation sets per level can
be small and accuracies near 0 or 1 (the demo set, a tiny model): Wald then gives zero-width or out-of-[0, 1]
intervals, Wilson stays inside [0, 1] and keeps close to its nominal coverage.

    centre    = (p + z^2 / 2n) / (1 + z^2 / n)
    halfwidth = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

with p = k / n and z the two-sided normal quantile of the confidence level (1.96 for 95 %).
"""

from __future__ import annotations

import math
from statistics import NormalDist


def z_for_confidence(confidence: float) -> float:
    """Two-sided standard-normal quantile: the z with P(|Z| <= z) = ``confidence``.

    >>> round(z_for_confidence(0.95), 6)
    1.959964
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for ``successes`` out of ``n`` trials.

    With ``n == 0`` nothing is known and the interval is the whole range ``(0.0, 1.0)``.

    >>> [round(x, 4) for x in wilson_interval(5, 10)]
    [0.2366, 0.7634]
    >>> [round(x, 4) for x in wilson_interval(0, 10)]
    [0.0, 0.2775]
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = z_for_confidence(confidence)
    p = successes / n
    z2_n = z * z / n
    centre = (p + z2_n / 2.0) / (1.0 + z2_n)
    half = z / (1.0 + z2_n) * math.sqrt(p * (1.0 - p) / n + z2_n / (4.0 * n))
    # The bounds are exactly 0 at k = 0 and 1 at k = n; rounding would leave them a hair off either way.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
