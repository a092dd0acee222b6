"""The report's first screen: what ran, who wins where, and what this suite can resolve.

Per (dataset, regime), over its cells (teacher -> student pairs), for every method: its mean rank (1 = the best
mean top1 last of the cell; ties share the mean rank), wins / ties / losses against the baseline (the report's
``--baseline``, KD by default: :mod:`kdbench.report.options`; paired by seed; a tie = the paired 95% CI contains 0;
cells with fewer than two common seeds are counted as unresolved, never as ties), and the probability of
improvement over the baseline (rliable's definition, Agarwal et al. 2021: per cell ``P(X > Y) + P(X = Y) / 2`` over
all pairs of a seed of the method and a seed of the baseline, averaged over cells) with a 95% percentile interval
from a stratified bootstrap over seeds (2,000 resamples, fixed RNG seed). The minimum detectable effect is that of
a paired t-test at alpha 0.05 and 80% power with this suite's seed count, from the pooled sd of the paired
differences to the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from kdbench.report.options import DEFAULT_BASELINE, ReportOptions
from kdbench.report.stats import by_seed, done_runs, paired_delta

METRIC = "top1_last"
BOOTSTRAP = 2000
NOTHING_RAN = "nothing ran yet: no records found"


@dataclass(frozen=True)
class Standing:
    """One method's line of a leaderboard."""

    label: str
    cells: int
    mean_rank: float
    wins: int
    ties: int
    losses: int
    unresolved: int
    poi: float | None  # probability of improvement over the baseline
    poi_low: float | None
    poi_high: float | None


@dataclass(frozen=True)
class Leaderboard:
    """A leaderboard of one (dataset, regime): standings best rank first, and the suite's resolution."""

    dataset: str
    regime: str
    cells: int
    seeds: int
    standings: tuple[Standing, ...]
    mde: float | None  # minimum detectable paired effect vs the baseline, top-1 points
    pooled_sd: float | None
    baseline: str = DEFAULT_BASELINE  # the label every paired comparison is taken against


def _seed_values(frame: pd.DataFrame) -> dict[int, float]:
    return by_seed(done_runs(frame), METRIC)  # the tables' pairing by seed, on the finished runs


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """``P(X > Y) + 0.5 P(X = Y)`` over all pairs of values (the Mann-Whitney U statistic over n_x n_y)."""
    diff = x[:, None] - y[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def bootstrap_poi(cells: list[tuple[np.ndarray, np.ndarray]], seed: int = 0,
                  resamples: int = BOOTSTRAP) -> tuple[float, float, float]:
    """Mean probability of improvement over cells, and its 95% stratified-bootstrap percentile interval
    (seeds resampled with replacement within each cell, for both methods)."""
    point = float(np.mean([probability_of_improvement(x, y) for x, y in cells]))
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for b in range(resamples):
        draws[b] = np.mean([probability_of_improvement(rng.choice(x, len(x)), rng.choice(y, len(y)))
                            for x, y in cells])
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true paired difference a two-sided paired t-test with ``n`` seeds detects with ``power``."""
    if n < 2 or not math.isfinite(sd):
        return None
    t = _scipy_stats.t
    return float((t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * sd / math.sqrt(n))


def leaderboards(frame: pd.DataFrame, options: ReportOptions | None = None) -> list[Leaderboard]:
    """One leaderboard per (dataset, regime) of the student runs in ``frame``, against ``options.baseline``."""
    baseline = (options or ReportOptions()).baseline
    if frame.empty or "role" not in frame or METRIC not in frame:
        return []
    students = frame[frame.role == "student"]
    boards = []
    for (dataset, regime), group in students.groupby(list(("dataset", "regime")), dropna=False, sort=True):
        cells = list(group.groupby(list(("teacher", "student")), dropna=False, sort=True))
        ranks: dict[str, list[float]] = {}
        record: dict[str, list[int]] = {}
        poi_cells: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        diffs_sd: list[tuple[float, int]] = []
        seeds = 0
        for _, cell in cells:
            values = {label: _seed_values(runs) for label, runs in cell.groupby("label")}
            values = {label: v for label, v in values.items() if v}
            seeds = max([seeds, *[len(v) for v in values.values()]])
            means = pd.Series({label: float(np.mean(list(v.values()))) for label, v in values.items()})
            for label, rank in means.rank(ascending=False, method="average").items():
                ranks.setdefault(str(label), []).append(float(rank))
            base = values.get(baseline)
            for label, mine in values.items():
                tally = record.setdefault(label, [0, 0, 0, 0])
                if label == baseline or not base:
                    continue
                delta = paired_delta(mine, base)
                if delta is None or delta.inside_noise is None:
                    tally[3] += 1
                elif delta.inside_noise:
                    tally[1] += 1
                else:
                    tally[0 if delta.summary.mean > 0 else 2] += 1
                if delta is not None and delta.summary.n >= 2:
                    diffs_sd.append((delta.summary.sd, delta.summary.n))
                poi_cells.setdefault(label, []).append((np.array(list(mine.values())),
                                                        np.array(list(base.values()))))
        standings = []
        for label, rank_list in ranks.items():
            wins, ties, losses, unresolved = record.get(label, [0, 0, 0, 0])
            poi = poi_cells.get(label)
            point, low, high = bootstrap_poi(poi) if poi else (None, None, None)
            standings.append(Standing(label, len(rank_list), float(np.mean(rank_list)), wins, ties, losses,
                                      unresolved, point, low, high))
        standings.sort(key=lambda s: (s.mean_rank, s.label))
        pooled = None
        if diffs_sd:
            dof = sum(n - 1 for _, n in diffs_sd)
            pooled = math.sqrt(sum(sd**2 * (n - 1) for sd, n in diffs_sd) / dof)
        mde = minimum_detectable_effect(pooled, seeds) if pooled is not None else None
        boards.append(Leaderboard(str(dataset), str(regime), len(cells), seeds, tuple(standings), mde, pooled,
                                  baseline))
    return boards


def what_ran(frame: pd.DataFrame, missing: int, stale: int) -> list[str]:
    """A few lines: suites, data, pairs, regimes, seeds, run states, compute, code and environment."""
    if frame.empty or "role" not in frame:
        return [NOTHING_RAN]
    students = frame[frame.role == "student"]
    teachers = frame[frame.role == "teacher"]
    suites = sorted({p.split("/runs/")[0].split("/teachers/")[0].rsplit("/", 1)[-1] for p in frame.path})
    pairs = sorted({f"{t} -> {s}" for t, s in zip(students.teacher, students.student, strict=True)})
    states = students.state.value_counts().to_dict()
    state_text = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    extra = ", ".join(x for x in (f"{missing} missing" if missing else "", f"{stale} stale" if stale else "") if x)
    hours = float(frame.wall_seconds.fillna(0).sum()) / 3600 if "wall_seconds" in frame else 0.0
    devices = sorted({str(d) for d in frame.get("env_device_name", pd.Series(dtype=str)).dropna()}) or \
        sorted({str(d) for d in frame.get("env_device", pd.Series(dtype=str)).dropna()})
    commits = sorted({str(c)[:10] for c in frame.get("env_git_commit", pd.Series(dtype=str)).dropna()})
    torch_versions = sorted({str(v) for v in frame.get("env_torch", pd.Series(dtype=str)).dropna()})
    seeds = sorted({int(s) for s in students.seed.dropna()})
    lines = [f"suites: {', '.join(suites)}; data: {', '.join(sorted(students.dataset.dropna().unique()))}; "
             f"regimes: {', '.join(sorted(students.regime.dropna().astype(str).unique()))}",
             f"pairs ({len(pairs)}): {'; '.join(pairs[:4])}{' ...' if len(pairs) > 4 else ''}",
             f"student runs: {len(students)} ({state_text}{'; ' + extra if extra else ''}); teacher jobs: "
             f"{len(teachers)}; seeds: {', '.join(map(str, seeds))}",
             f"compute: {hours:.2f} h of run wall time on {', '.join(devices) or 'unknown devices'}; "
             f"torch {', '.join(torch_versions) or '?'}; commit {', '.join(commits) or 'unknown'}"]
    return lines


def leaderboard_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one leaderboard table."""
    base = board.baseline
    headers = list(("method", "cells", "mean rank", f"W/T/L vs {base}", "unresolved", f"P(better than {base})"))
    rows = []
    for s in board.standings:
        poi = "" if s.poi is None else f"{s.poi:.2f} [{s.poi_low:.2f}, {s.poi_high:.2f}]"
        wtl = "" if s.label == base else f"{s.wins}/{s.ties}/{s.losses}"
        rows.append([s.label, str(s.cells), f"{s.mean_rank:.2f}", wtl,
                     "" if s.label == base else str(s.unresolved), poi])
    return headers, rows


def resolution_line(board: Leaderboard) -> str:
    """What this suite can resolve in one (dataset, regime)."""
    if board.seeds < 2:
        return (f"resolution: {board.seeds} seed per cell: no confidence interval, no difference is resolved; "
                "run >= 3 seeds")
    if board.mde is None:
        return f"resolution: {board.seeds} seeds, no paired runs against {board.baseline} to estimate the noise"
    return (f"resolution: with {board.seeds} seeds a paired difference to {board.baseline} below {board.mde:.2f} "
            "top-1 points is not reliably detected (paired t-test, alpha 0.05, 80% power; pooled sd of the paired "
            f"differences {board.pooled_sd:.2f})")
