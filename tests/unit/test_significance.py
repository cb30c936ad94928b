"""Paired bootstrap comparisons, the power formulas and their checks against simulation."""

from __future__ import annotations

import math
import time
from statistics import NormalDist

import numpy as np
import pytest

from mixray.science.significance import (
    Comparison,
    Scores,
    detectable_difference,
    effective_problems,
    paired_difference,
    problems_needed,
)

Z = NormalDist().inv_cdf(0.975)


def _scores(values: np.ndarray, name: str = "bench") -> Scores:
    return Scores({name: tuple(float(v) for v in values)})


def _paired_data(rng: np.random.Generator, n: int, delta: float, samples: int = 4):
    """Per-problem scores of two models whose true accuracy differs by exactly `delta` on every
    problem; a shared difficulty makes their scores positively correlated across problems."""
    q = rng.uniform(0.1, 0.9, size=n)
    a = rng.binomial(samples, q + delta / 2) / samples
    b = rng.binomial(samples, q - delta / 2) / samples
    return a, b


def test_detectable_difference_has_its_power_in_simulation() -> None:
    n, sims = 200, 4000
    d = detectable_difference(n, 0.5)
    rng = np.random.default_rng(7)
    # Each problem is one Bernoulli outcome; the two evaluations are independent.
    x1 = (rng.random((sims, n)) < 0.5 - d / 2).mean(axis=1)
    x2 = (rng.random((sims, n)) < 0.5 + d / 2).mean(axis=1)
    pooled = (x1 + x2) / 2
    z = (x2 - x1) / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert np.mean(np.abs(z) > Z) == pytest.approx(0.80, abs=0.03)


def test_problems_needed_inverts_detectable_difference_and_matches_textbook() -> None:
    for n in (50, 200, 1000):
        for p in (0.2, 0.5, 0.9):
            assert abs(problems_needed(detectable_difference(n, p), p) - n) <= 1
    # 2 (1.96 + 0.8416)^2 0.25 / 0.01 = 392.4
    assert problems_needed(0.1, 0.5) == 393
    stderr = 0.02
    d = detectable_difference(300, stderr=stderr)
    assert d == pytest.approx((Z + NormalDist().inv_cdf(0.8)) * stderr)
    assert abs(problems_needed(d, n_problems=300, stderr=stderr) - 300) <= 1
    # Halving the difference needs four times the problems.
    assert abs(problems_needed(d / 2, n_problems=300, stderr=stderr) - 1200) <= 1


def test_paired_interval_covers_the_true_difference_and_beats_unpaired() -> None:
    rng = np.random.default_rng(11)
    delta, n, runs = 0.1, 100, 200
    covered, ratios = 0, []
    for i in range(runs):
        a, b = _paired_data(rng, n, delta)
        c = paired_difference([_scores(a)], [_scores(b)], resamples=500, seed=i)
        covered += c.low <= delta <= c.high
        unpaired = 2 * Z * math.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n)
        ratios.append((c.high - c.low) / unpaired)
    assert 0.90 <= covered / runs <= 0.99
    assert np.mean(ratios) < 0.85
    assert max(ratios) < 1.0


def test_bootstrap_stderr_matches_analytic_paired_stderr() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    a, b = _paired_data(rng, n, 0.05)
    c = paired_difference([_scores(a)], [_scores(b)])
    analytic = np.std(a - b, ddof=1) / math.sqrt(n)
    assert c.stderr == pytest.approx(analytic, rel=0.10)
    assert c.difference == pytest.approx(a.mean() - b.mean())
    assert c.n_problems == n and c.seeds == (1, 1)


def test_seed_spread_widens_the_interval() -> None:
    rng = np.random.default_rng(5)
    a, b = _paired_data(rng, 300, 0.05)
    # Two seeds per side whose accuracies differ by 0.3: the point itself is uncertain.
    a_seeds = [_scores(np.clip(a + s, 0, 1)) for s in (0.15, -0.15)]
    b_seeds = [_scores(np.clip(b + s, 0, 1)) for s in (0.15, -0.15)]
    two = paired_difference(a_seeds, b_seeds)
    a_mean = np.mean([s.benchmarks["bench"] for s in a_seeds], axis=0)
    b_mean = np.mean([s.benchmarks["bench"] for s in b_seeds], axis=0)
    one = paired_difference([_scores(a_mean)], [_scores(b_mean)])
    assert two.difference == pytest.approx(one.difference)
    assert two.seeds == (2, 2)
    assert two.high - two.low > 2 * (one.high - one.low)


def test_accuracy_is_the_unweighted_mean_over_benchmarks() -> None:
    scores = Scores({"small": (1.0,) * 10, "big": (0.0,) * 500 + (1.0,) * 500})
    assert scores.accuracy() == pytest.approx(0.75)  # not (10 + 500) / 1010
    assert scores.sizes() == {"small": 10, "big": 1000}
    assert effective_problems([10, 1000]) == pytest.approx(4 / (1 / 10 + 1 / 1000))
    assert effective_problems([200]) == pytest.approx(200)


def test_paired_difference_resamples_within_each_benchmark() -> None:
    # The small benchmark carries half of P: its 10 problems dominate the error.
    rng = np.random.default_rng(9)
    small_a, small_b = _paired_data(rng, 10, 0.1)
    big_a, big_b = _paired_data(rng, 1000, 0.1)
    a = Scores({"small": tuple(small_a), "big": tuple(big_a)})
    b = Scores({"small": tuple(small_b), "big": tuple(big_b)})
    c = paired_difference([a], [b])
    assert c.difference == pytest.approx(a.accuracy() - b.accuracy())
    expected = math.sqrt(np.var(small_a - small_b) / 10 + np.var(big_a - big_b) / 1000) / 2
    assert c.stderr == pytest.approx(expected, rel=0.15)
    assert c.n_problems == 1010


def test_a_two_seed_comparison_of_500_problems_is_fast() -> None:
    rng = np.random.default_rng(1)
    a = [_scores(x) for x in _paired_data(rng, 500, 0.1)]
    b = [_scores(x) for x in _paired_data(rng, 500, 0.0)]
    start = time.perf_counter()
    paired_difference(a, b, resamples=2000)
    assert time.perf_counter() - start < 1.0


def test_clear_errors() -> None:
    one = Scores({"x": (0.5, 1.0)})
    with pytest.raises(ValueError, match="benchmarks"):
        paired_difference([one], [Scores({"y": (0.5, 1.0)})])
    with pytest.raises(ValueError, match=r"b\[0\] problem counts.*'x': \(3, 2\)"):
        paired_difference([one], [Scores({"x": (0.5, 1.0, 0.0)})])
    with pytest.raises(ValueError, match=r"a\[1\]"):
        paired_difference([one, Scores({"x": (0.5,)})], [one])
    with pytest.raises(ValueError, match="both sides"):
        paired_difference([], [one])
    with pytest.raises(ValueError, match="resamples"):
        paired_difference([one], [one], resamples=10)
    with pytest.raises(ValueError, match="level"):
        paired_difference([one], [one], level=1.0)
    with pytest.raises(ValueError, match="alpha"):
        detectable_difference(100, alpha=1.5)
    with pytest.raises(ValueError, match="power"):
        problems_needed(0.1, power=0.0)
    with pytest.raises(ValueError, match="accuracy"):
        detectable_difference(100, accuracy=1.2)
    with pytest.raises(ValueError, match="n_problems"):
        detectable_difference(0)
    with pytest.raises(ValueError, match="difference"):
        problems_needed(-0.1)
    with pytest.raises(ValueError, match="go together"):
        problems_needed(0.1, stderr=0.01)
    with pytest.raises(ValueError, match="outside 0..1"):
        Scores({"x": (0.5, 1.5)})
    with pytest.raises(ValueError, match="no problems"):
        Scores({"x": ()})


def test_scores_json_round_trip_and_malformed_documents() -> None:
    scores = Scores({"a": (0.0, 0.25, 1.0), "b": (0.5,)})
    assert Scores.from_json(scores.to_json()) == scores
    assert Scores.from_json({"benchmarks": {"a": [0, 1]}}) == Scores({"a": (0.0, 1.0)})
    for bad in ([], {}, {"benchmarks": []}, {"benchmarks": {"a": "0.5"}},
                {"benchmarks": {"a": [0.5, None]}}, {"benchmarks": {"a": [True]}},
                {"benchmarks": {}}, {"benchmarks": {"a": [2.0]}}):
        with pytest.raises(ValueError):
            Scores.from_json(bad)


@pytest.mark.parametrize("seeds", [1, 2])
def test_identical_sides_differ_by_exactly_nothing(seeds: int) -> None:
    rng = np.random.default_rng(2)
    side = [_scores(rng.uniform(0, 1, 50)) for _ in range(seeds)]
    c = paired_difference(side, list(reversed(side)))
    assert c == Comparison(0.0, 0.0, 0.0, 1.0, 0.0, 50, (seeds, seeds), 0.95)
    assert not c.significant


def test_equal_evaluations_in_unequal_numbers_differ_by_nothing() -> None:
    # Every evaluation scores every problem the same: any resample of problems or seeds is 0.
    a, b = Scores({"x": (0.0, 0.5, 1.0)}), Scores({"x": (0.0, 0.5, 1.0)})
    c = paired_difference([a, a], [b, b, b])
    assert (c.difference, c.low, c.high, c.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not c.significant


def test_a_clear_difference_is_significant() -> None:
    rng = np.random.default_rng(4)
    a, b = _paired_data(rng, 400, 0.15)
    c = paired_difference([_scores(a)], [_scores(b)])
    assert c.significant and c.low > 0 and c.p_value < 0.01
    swapped = paired_difference([_scores(b)], [_scores(a)])
    assert swapped.difference == pytest.approx(-c.difference)
    assert swapped.significant and swapped.high < 0
