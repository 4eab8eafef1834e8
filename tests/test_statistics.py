"""cmkd_bench.reporting.statistics against numbers computed by hand here and against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cmkd_bench.reporting import statistics as st


def test_pairing_keeps_only_the_seeds_both_sides_have_in_the_first_sides_order() -> None:
    values, baseline = st.pair_by_seed([10, 11, 12], ["2", "0", "1"], [1.0, 2.0, 4.0], ["0", "1", "3"])
    assert (values, baseline) == ([11, 12], [1.0, 2.0])


def test_paired_difference_matches_the_t_distribution_with_two_degrees_of_freedom_by_hand() -> None:
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2*sqrt(3) on 2 df, where the t CDF has the
    # closed form 1/2 + t / (2 sqrt(t^2 + 2)): two-sided p = 1 - t / sqrt(t^2 + 2), and the 97.5%
    # quantile solves t / sqrt(t^2 + 2) = 0.95, i.e. t = 0.95 sqrt(2 / (1 - 0.95^2)).
    result = st.paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    t = 2 * math.sqrt(3)
    quantile = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))
    assert result.n == 3 and result.differences == (1.0, 2.0, 3.0)
    assert result.mean == pytest.approx(2.0)
    assert result.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)  # 0.07418
    assert result.ci_low == pytest.approx(2 - quantile / math.sqrt(3), rel=1e-9)  # 2 - 2.48414
    assert result.ci_high == pytest.approx(2 + quantile / math.sqrt(3), rel=1e-9)


def test_paired_p_and_ci_follow_scipy_on_uneven_data() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(70, 2, size=5)
    method = base + rng.normal(0.8, 1.0, size=5)
    result = st.paired_difference(list(method), list(base))
    assert result.p_value == pytest.approx(stats.ttest_rel(method, base).pvalue, rel=1e-9)
    # and it is not Welch's unpaired test, which ignores that the seeds pair up
    assert result.p_value != pytest.approx(stats.ttest_ind(method, base, equal_var=False).pvalue, rel=1e-3)
    low, high = stats.t.interval(0.95, 4, loc=np.mean(method - base), scale=stats.sem(method - base))
    assert (result.ci_low, result.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_fewer_than_two_pairs_give_a_mean_but_no_ci_and_no_p() -> None:
    one = st.paired_difference([5.0], [3.0])
    assert (one.n, one.mean, one.ci_low, one.ci_high, one.p_value) == (1, 2.0, None, None, None)
    assert st.paired_difference([], []).mean is None


def test_identical_differences_follow_ttest_rel_where_it_is_defined() -> None:
    assert st.paired_difference([2.0, 3.0], [1.0, 2.0]).p_value == 0.0  # a constant shift: t is infinite
    assert stats.ttest_rel([2.0, 3.0], [1.0, 2.0]).pvalue == 0.0
    assert st.paired_difference([1.0, 2.0], [1.0, 2.0]).p_value is None  # no difference at all: nan in scipy


def test_holm_step_down_by_hand() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, and still monotone
    assert st.holm([None, 0.02, 0.04]) == [None, pytest.approx(0.04), pytest.approx(0.04)]  # family of 2
    assert st.holm([]) == []


def test_holm_matches_statsmodels_where_installed() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p_values = [0.001, 0.2, 0.03, 0.04, 0.0125, 0.9]
    expected = multitest.multipletests(p_values, method="holm")[1]
    assert st.holm(p_values) == pytest.approx(list(expected))


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert st.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert st.iqm([0, 0, 1, 100]) == pytest.approx(0.5)  # the outlier does not move it


def test_stratified_bootstrap_is_degenerate_where_no_column_varies_and_reproducible_where_they_do() -> None:
    # every resample of constant columns is the same pool: the interval collapses onto the point
    assert st.stratified_bootstrap_iqm([[1.0, 1.0, 1.0], [3.0, 3.0]]) == (pytest.approx(5 / 3),) * 3  # 1, 1 and 3 in the middle
    columns = [[0.5, -1.0, 2.0], [1.0, 1.5, 0.0], [-0.5, 2.5, 1.0]]
    point, low, high = st.stratified_bootstrap_iqm(columns)
    assert point == pytest.approx(st.iqm(sum(columns, [])))
    assert low < point < high
    assert st.stratified_bootstrap_iqm(columns) == (point, low, high)  # fixed seed
    assert st.stratified_bootstrap_iqm([[2.0], [4.0]])[1:] == (None, None)  # no column has two runs


def test_stratified_bootstrap_resamples_within_columns_only() -> None:
    # Column a is all 0 and column b all 10: resampling across columns would sometimes draw four 10s
    # (IQM 10) or four 0s; within columns every pool is {0, 0, 10, 10}, whose IQM is always 5.
    assert st.stratified_bootstrap_iqm([[0.0, 0.0], [10.0, 10.0]])[1:] == (5.0, 5.0)


def test_probability_of_improvement_by_hand_and_against_mann_whitney() -> None:
    first = ([1.0, 2.0, 3.0], [2.0, 2.0, 0.0])  # 1 + (0.5 + 0.5 + 1) + 3 = 6 of 9 pairs
    second = ([5.0], [1.0, 7.0])  # 1 of 2
    assert st.probability_of_improvement([first]) == pytest.approx(6 / 9)
    assert stats.mannwhitneyu(*first).statistic / 9 == pytest.approx(6 / 9)
    assert st.probability_of_improvement([first, second]) == pytest.approx((6 / 9 + 0.5) / 2)
    assert st.probability_of_improvement([([], [1.0])]) is None


SCORES = {  # a 3x3 block without ties, plus methods that lack columns
    "A": {"c1": 3.0, "c2": 2.0, "c3": 3.0},
    "B": {"c1": 2.0, "c2": 3.0, "c3": 1.0},
    "C": {"c1": 1.0, "c2": 1.0, "c3": 2.0},
}


def test_ranks_and_friedman_by_the_textbook_formula() -> None:
    result = st.ranks_over_common_columns(SCORES)
    # per column ranks (1 = best): c1 A1 B2 C3, c2 A2 B1 C3, c3 A1 B3 C2: rank sums 4, 6, 8
    assert result.ranks == pytest.approx({"A": 4 / 3, "B": 2.0, "C": 8 / 3})
    n, k, sums = 3, 3, [4, 6, 8]
    chi2 = 12 / (n * k * (k + 1)) * sum(r * r for r in sums) - 3 * n * (k + 1)  # 2.667
    assert result.friedman_statistic == pytest.approx(chi2)
    assert result.friedman_p == pytest.approx(math.exp(-chi2 / 2))  # chi-square on 2 df
    assert result.friedman_p == pytest.approx(stats.friedmanchisquare([3, 2, 3], [2, 3, 1], [1, 1, 2]).pvalue)


def test_ranks_are_over_the_columns_every_ranked_method_has() -> None:
    scores = {**SCORES, "C": {"c1": 1.0, "c2": 1.0}, "D": {"c1": 9.0}}
    # {c1, c2, c3}: 2 methods x 3 = 6 cells; {c1, c2}: 3 x 2 = 6 (more methods wins); {c1}: 4 x 1
    methods, columns = st.common_columns(scores)
    assert (sorted(methods), columns) == (["A", "B", "C"], ["c1", "c2"])
    result = st.ranks_over_common_columns(scores)
    assert "D" not in result.ranks and result.columns == ("c1", "c2")
    assert result.ranks == pytest.approx({"A": 1.5, "B": 1.5, "C": 3.0})  # c3 no longer counts for A


def test_friedman_needs_three_methods_and_two_columns() -> None:
    two = st.ranks_over_common_columns({"A": SCORES["A"], "B": SCORES["B"]})
    assert two.ranks == pytest.approx({"A": 4 / 3, "B": 5 / 3}) and two.friedman_p is None
    one_column = st.ranks_over_common_columns({m: {"c1": s["c1"]} for m, s in SCORES.items()})
    assert one_column.ranks and one_column.friedman_p is None
    assert st.ranks_over_common_columns({"A": {"c1": 1.0}}).ranks == {}
