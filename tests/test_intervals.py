"""The interval functions against values computed another way: Student's t quantiles from printed
tables, Wilson bounds as the roots of their defining quadratic, a t interval by hand."""

from __future__ import annotations

import math

import pytest

from rlaif.pipeline.intervals import mean_interval, t_cdf, t_quantile
from rlaif.stats_intervals import wilson

# two-sided 95% and 99% critical values of Student's t (any statistics table)
TABLE = [(1, 0.975, 12.7062), (2, 0.975, 4.3027), (5, 0.975, 2.5706), (9, 0.975, 2.2622), (29, 0.975, 2.0452),
         (4, 0.995, 4.6041), (10, 0.995, 3.1693), (100000, 0.975, 1.9600)]


@pytest.mark.parametrize("df,p,value", TABLE)
def test_t_quantiles_match_the_tables(df, p, value):
    assert t_quantile(p, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-value, abs=1e-4)
    assert t_cdf(value, df) == pytest.approx(p, abs=1e-5)


def test_t_cdf_with_one_degree_of_freedom_is_the_cauchy_cdf():
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)


@pytest.mark.parametrize("k,n", [(0, 6), (3, 6), (6, 6), (8, 10), (97, 120)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    """The Wilson bounds are the p with (k/n - p)^2 = z^2 p (1 - p) / n."""
    z = 1.959963984540054
    lo, hi = wilson(k, n)
    a, b, c = 1 + z * z / n, -(2 * k / n + z * z / n), (k / n) ** 2
    roots = sorted(((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a), (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
    assert (lo, hi) == pytest.approx(roots, abs=1e-12)
    assert wilson(0, 0) == (None, None)


def test_mean_interval_by_hand():
    # mean 2.5, sd sqrt(5/3), t(0.975, 3) = 3.18245: half-width 3.18245 * 1.290994 / 2
    st = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert st["mean"] == 2.5 and st["sd"] == pytest.approx(math.sqrt(5 / 3))
    assert st["hi"] - 2.5 == pytest.approx(3.18245 * math.sqrt(5 / 3) / 2, abs=1e-4)
    assert mean_interval([0.7] * 5)["lo"] == pytest.approx(0.7) and mean_interval([1.0])["lo"] is None
