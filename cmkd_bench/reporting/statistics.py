"""Paired statistics against no-kd, per column and across columns (DESIGN.md, Protocol: Statistics).

Per column (one table: a dataset, direction and protocol): a method's per-seed differences to no-kd,
paired by seed because the same seed means the same teacher and data order; their mean with a Student-t
95% CI, the two-sided paired t-test, and Holm's step-down adjustment over the column's methods.
Across columns, with rliable's definitions (Agarwal et al. 2021, "Deep RL at the edge of the
statistical precipice"): the interquartile mean of the pooled differences with a stratified bootstrap
CI, the probability of improvement, and average ranks over the columns every ranked method has, with
Friedman's test over them. numpy and scipy only; scipy is imported where needed (it is slow to import).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

LEVEL = 0.95  # the confidence of every interval here
BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same records give the same interval, so tables regenerate byte for byte


@dataclass(frozen=True)
class PairedResult:
    n: int  # seeds both sides have
    differences: tuple[float, ...]  # method - baseline, per shared seed, in seed order
    mean: float | None
    ci_low: float | None  # None with fewer than 2 pairs: no spread to estimate
    ci_high: float | None
    p_value: float | None


def pair_by_seed(values: Sequence[float], seeds: Sequence[Hashable], baseline: Sequence[float],
                 baseline_seeds: Sequence[Hashable]) -> tuple[list[float], list[float]]:
    """The two sides' values on the seeds both have, in the order of the first side's seeds."""
    base = dict(zip(baseline_seeds, baseline))
    shared = [(value, base[seed]) for seed, value in zip(seeds, values) if seed in base]
    return [a for a, _ in shared], [b for _, b in shared]


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> PairedResult:
    """Mean of values - baseline (already paired), its Student-t CI and the paired t-test's p."""
    diffs = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(diffs)
    if n == 0:
        return PairedResult(0, (), None, None, None, None)
    mean = float(diffs.mean())
    if n < 2:
        return PairedResult(n, tuple(map(float, diffs)), mean, None, None, None)
    from scipy import stats

    sem = float(diffs.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf((1 + LEVEL) / 2, n - 1)) * sem
    p_value = _paired_p(diffs, sem)
    return PairedResult(n, tuple(map(float, diffs)), mean, mean - half, mean + half, p_value)


def _paired_p(diffs: np.ndarray, sem: float) -> float | None:
    """Two-sided p of the paired t-test (= scipy.stats.ttest_rel). Identical differences have no spread:
    all zero is no evidence (None), a constant nonzero shift is certain (p = 0), as ttest_rel's limit."""
    from scipy import stats

    mean = float(diffs.mean())
    if sem == 0:
        return None if mean == 0 else 0.0
    t = mean / sem
    return float(2 * stats.t.sf(abs(t), len(diffs) - 1))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values (None stays None and is not counted in the family).

    Sorted ascending, the i-th (0-based) of m is multiplied by m - i, made monotone by a running maximum
    and capped at 1, so that rejecting where adjusted p < alpha controls the family-wise error at alpha.
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (rliable's aggregate; scipy's trim_mean at 0.25)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, dtype=float), 0.25))


def stratified_bootstrap_iqm(columns: Sequence[Sequence[float]], reps: int = BOOTSTRAP_REPS,
                             seed: int = BOOTSTRAP_SEED) -> tuple[float, float | None, float | None]:
    """IQM of the pooled values and its percentile bootstrap CI, resampling each column's runs (seeds)
    with replacement independently (rliable's StratifiedBootstrap). No CI when no column has 2 runs."""
    from scipy.stats import trim_mean

    columns = [np.asarray(column, dtype=float) for column in columns if len(column)]
    point = iqm(np.concatenate(columns)) if columns else math.nan
    if not columns or all(len(column) < 2 for column in columns):
        return point, None, None
    rng = np.random.default_rng(seed)
    samples = np.concatenate([column[rng.integers(0, len(column), size=(reps, len(column)))]
                              for column in columns], axis=1)
    estimates = trim_mean(samples, 0.25, axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return point, float(low), float(high)


def probability_of_improvement(columns: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float | None:
    """P(X > Y): per column, over every pair of a run of X and a run of Y, P(x > y) + 0.5 P(x = y)
    (the Mann-Whitney U statistic over n*m), averaged over the columns (rliable's definition)."""
    per_column = []
    for x, y in columns:
        if len(x) and len(y):
            a, b = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
            per_column.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return float(np.mean(per_column)) if per_column else None


@dataclass(frozen=True)
class RankResult:
    ranks: dict[Any, float]  # method -> mean rank over the common columns (1 = best)
    columns: tuple[Any, ...]  # the common columns
    friedman_statistic: float | None
    friedman_p: float | None


def common_columns(scores: Mapping[Any, Mapping[Any, float]]) -> tuple[list[Any], list[Any]]:
    """(methods, columns) to rank: the columns every ranked method has. Among the methods' own column
    sets, the one shared by the largest block of methods x columns (ties: more methods, then more
    columns), so that one method measured in a single column does not shrink everyone's ranking to it."""
    best: tuple[tuple[int, int, int], list[Any], list[Any]] | None = None
    for candidate in {frozenset(columns) for columns in scores.values()}:
        methods = [method for method, columns in scores.items() if candidate <= set(columns)]
        key = (len(methods) * len(candidate), len(methods), len(candidate))
        ordered = sorted(candidate, key=str)
        if best is None or key > best[0] or (key == best[0] and list(map(str, ordered)) < list(map(str, best[2]))):
            best = (key, methods, ordered)
    if best is None or len(best[1]) < 2:
        return [], []
    return best[1], best[2]


def ranks_over_common_columns(scores: Mapping[Any, Mapping[Any, float]]) -> RankResult:
    """Mean rank (higher score = better rank; ties share the mean rank) of each method over the common
    columns, and Friedman's test over them (needs 3 or more methods and 2 or more columns, else None)."""
    from scipy.stats import friedmanchisquare, rankdata

    methods, columns = common_columns(scores)
    if not methods:
        return RankResult({}, (), None, None)
    matrix = np.array([[scores[method][column] for method in methods] for column in columns])
    ranks = np.vstack([rankdata(-row) for row in matrix])  # rank 1 for the highest score
    result = RankResult(dict(zip(methods, map(float, ranks.mean(axis=0)))), tuple(columns), None, None)
    if len(methods) >= 3 and len(columns) >= 2:
        statistic, p_value = friedmanchisquare(*matrix.T)
        if not math.isnan(statistic):  # every column tied: no ranking to test
            result = RankResult(result.ranks, result.columns, float(statistic), float(p_value))
    return result
