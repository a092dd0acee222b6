"""Statistics of the report: mean, sd, 95% t-interval, and paired deltas over matching seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Summary:
    """mean, sample sd (ddof 1; 0 for n = 1), n and the 95% t-interval half width (None for n < 2)."""

    mean: float
    sd: float
    n: int
    ci95: float | None

    @property
    def low(self) -> float | None:
        return None if self.ci95 is None else self.mean - self.ci95

    @property
    def high(self) -> float | None:
        return None if self.ci95 is None else self.mean + self.ci95


def t_quantile(n: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile for ``n`` observations (``n - 1`` degrees of freedom)."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1))


def summarize(values: Sequence[float], level: float = 0.95) -> Summary | None:
    """Summary of finite values; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return None
    mean = sum(xs) / n
    if n == 1:
        return Summary(mean, 0.0, 1, None)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, sd, n, t_quantile(n, level) * sd / math.sqrt(n))


@dataclass(frozen=True)
class PairedDelta:
    """``a - b`` over the seeds both have: its summary, and whether its 95% CI contains 0 (inside the noise)."""

    summary: Summary
    seeds: tuple[int, ...]

    @property
    def inside_noise(self) -> bool | None:
        """Whether the 95% CI contains 0; None when there is no CI (fewer than two seeds: nothing is known)."""
        s = self.summary
        return None if s.ci95 is None else s.low <= 0 <= s.high


def paired_delta(a: Mapping[int, float], b: Mapping[int, float]) -> PairedDelta | None:
    """Per-seed differences ``a[seed] - b[seed]`` over matching seeds, summarised; None without a common seed."""
    seeds = tuple(sorted(set(a) & set(b)))
    summary = summarize([a[s] - b[s] for s in seeds])
    return None if summary is None else PairedDelta(summary, seeds)
