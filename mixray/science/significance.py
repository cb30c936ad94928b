"""Paired significance and statistical power for sweep points evaluated on the same problems.

Every trial of a sweep is scored on the same problems, so two points are compared problem by
problem: what the problems share (their difficulty) cancels, and the interval is narrower than
two independent ones. A point repeated over training seeds is several evaluations whose spread is
part of its uncertainty, so the bootstrap resamples seeds as well as problems. P is the paper's
accuracy: the unweighted mean over benchmarks of each benchmark's mean per-problem score (as
`mixray.evaluate.scoring.average_over_benchmarks`). `paired_difference` gives the interval,
p-value and standard error of P(a) - P(b); `detectable_difference` and `problems_needed` the
power statement, before or after a result; `mean_and_stderr` the plain mean and its error
(evaluation's scoring uses it too). numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_BLOCK = 1 << 20  # resampled problem counts held at once: bounds memory (8 MB) on big benchmarks


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std, ddof=1, over sqrt(n)).

    The error of a single value is unknown, hence NaN: 0 would claim an exact mean."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_and_stderr needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


@dataclass(frozen=True)
class Scores:
    """Per-problem scores of one evaluation: benchmark name -> per-problem fraction of samples
    correct (0..1), in the evaluation's problem order (the same order in every trial of a sweep)."""

    benchmarks: dict[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        if not self.benchmarks:
            raise ValueError("Scores needs at least one benchmark")
        for name, values in self.benchmarks.items():
            if not values:
                raise ValueError(f"benchmark {name!r} has no problems; expected at least one")
            if not all(0.0 <= v <= 1.0 for v in values):  # NaN fails too
                raise ValueError(f"benchmark {name!r} has scores outside 0..1")

    def accuracy(self) -> float:
        """P: the unweighted mean over benchmarks of each benchmark's mean score."""
        means = [math.fsum(v) / len(v) for v in self.benchmarks.values()]
        return math.fsum(means) / len(means)

    def sizes(self) -> dict[str, int]:
        return {name: len(values) for name, values in self.benchmarks.items()}

    def to_json(self) -> dict:
        return {"benchmarks": {name: list(v) for name, v in self.benchmarks.items()}}

    @classmethod
    def from_json(cls, data: dict) -> Scores:
        benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
        if not isinstance(benchmarks, dict):
            # Not TypeError: the API promises ValueError for any malformed document.
            raise ValueError(  # noqa: TRY004
                f"expected {{'benchmarks': {{name: [scores]}}}}; got {data!r:.200}")
        out = {}
        for name, values in benchmarks.items():
            # bool is an int to Python but never a score in a well-formed document.
            if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                raise ValueError(f"benchmark {name!r}: expected a list of numbers")
            out[str(name)] = tuple(float(v) for v in values)
        return cls(out)


@dataclass(frozen=True)
class Comparison:
    """a - b on the same problems."""

    difference: float  # P(a) - P(b), each side averaged over its seeds
    low: float  # the interval at `level` (percentile bootstrap)
    high: float
    p_value: float  # two-sided bootstrap p-value for "no difference"
    stderr: float  # bootstrap standard error of the difference
    n_problems: int  # problems compared (all benchmarks)
    seeds: tuple[int, int]  # how many evaluations each side averaged
    level: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0


def _check_sides(a: Sequence[Scores], b: Sequence[Scores]) -> dict[str, int]:
    """The shared benchmark sizes; ValueError naming the first evaluation that differs."""
    if not a or not b:
        raise ValueError(f"both sides need an evaluation; got {len(a)} and {len(b)}")
    sizes = a[0].sizes()
    for side, evaluations in (("a", a), ("b", b)):
        for i, scores in enumerate(evaluations):
            other = scores.sizes()
            if set(other) != set(sizes):
                raise ValueError(f"{side}[{i}] has benchmarks {sorted(other)}; "
                                 f"expected those of a[0]: {sorted(sizes)}")
            wrong = {k: (other[k], n) for k, n in sizes.items() if other[k] != n}
            if wrong:
                raise ValueError(f"{side}[{i}] problem counts differ from a[0] (got, expected): "
                                 f"{wrong}")
    return sizes


def _replicates(side: Sequence[Scores], counts: dict[str, np.ndarray],
                rng: np.random.Generator) -> np.ndarray:
    """P of each replicate: problems weighted by their resample counts, seeds resampled."""
    k, r = len(side), next(iter(counts.values())).shape[0]
    total = np.zeros((k, r))
    for name, c in counts.items():
        matrix = np.array([s.benchmarks[name] for s in side])  # (seeds, problems)
        total += matrix @ c.T / c.shape[1]
    total /= len(counts)
    # A lone seed is the point's only evaluation: nothing to resample.
    weights = np.ones((r, 1)) if k == 1 else rng.multinomial(k, np.full(k, 1 / k), size=r)
    return np.einsum("rk,kr->r", weights, total) / k


def _problem_counts(n: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of n problems is drawn in each of `rows` resamples with replacement."""
    picks = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def _no_difference(a: Sequence[Scores], b: Sequence[Scores]) -> bool:
    """Whether the sides hold the same evaluations, or all evaluations are equal: every replicate
    is then 0, which floating-point seed weighting need not reproduce exactly."""
    keys_a, keys_b = ([tuple(sorted(s.benchmarks.items())) for s in side] for side in (a, b))
    return sorted(keys_a) == sorted(keys_b) or len(set(keys_a + keys_b)) == 1


def paired_difference(a: Sequence[Scores], b: Sequence[Scores], *, resamples: int = 2000,
                      seed: int = 0, level: float = 0.95) -> Comparison:
    """Paired bootstrap of P(a) - P(b). Each replicate resamples problems with replacement within
    each benchmark (the same indices for both sides: the pairing) and, on a side with more than
    one seed, that side's seeds with replacement (seeds are not paired across points).

    Sides holding the same evaluations (or only equal ones) are the same measurement: exactly 0,
    interval [0, 0], p-value 1."""
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100 for a usable interval; got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    sizes = _check_sides(a, b)
    diff = (math.fsum(s.accuracy() for s in a) / len(a)
            - math.fsum(s.accuracy() for s in b) / len(b))
    n_problems, seeds = sum(sizes.values()), (len(a), len(b))
    if _no_difference(a, b):
        return Comparison(0.0, 0.0, 0.0, 1.0, 0.0, n_problems, seeds, level)
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK // n_problems)
    parts = []
    for start in range(0, resamples, rows):
        block = min(rows, resamples - start)
        counts = {name: _problem_counts(n, block, rng) for name, n in sizes.items()}
        parts.append(_replicates(a, counts, rng) - _replicates(b, counts, rng))
    star = np.concatenate(parts)
    assert star.shape == (resamples,)
    low, high = np.quantile(star, [(1 - level) / 2, (1 + level) / 2])
    # Ties at 0 count on both sides (conservative); +1 keeps a p-value off an impossible 0.
    below, above = np.count_nonzero(star <= 0), np.count_nonzero(star >= 0)
    p_value = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    return Comparison(diff, float(low), float(high), p_value, float(np.std(star, ddof=1)),
                      n_problems, seeds, level)


def effective_problems(sizes: Sequence[int]) -> float:
    """Benchmarks of n_1..n_B problems averaged unweighted (P) have the variance of one benchmark
    of B^2 / sum(1/n_b) problems: Var(P) = sum(s^2 / n_b) / B^2 at a common per-problem s^2."""
    if not sizes or any(n <= 0 for n in sizes):
        raise ValueError(f"sizes must be one or more positive problem counts; got {list(sizes)}")
    return len(sizes) ** 2 / math.fsum(1 / n for n in sizes)


def _power_terms(alpha: float, power: float, accuracy: float) -> tuple[float, float]:
    """z_{1-alpha/2} + z_power, and 2 p (1 - p): the variance per problem of the difference of two
    independent evaluations with one Bernoulli sample per problem."""
    for name, value in (("alpha", alpha), ("power", power)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must lie in (0, 1); got {value}")
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must lie in [0, 1]; got {accuracy}")
    normal = NormalDist()
    return normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power), 2 * accuracy * (1 - accuracy)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value}")


def detectable_difference(n_problems: float, accuracy: float = 0.5, *, alpha: float = 0.05,
                          power: float = 0.8, stderr: float | None = None) -> float:
    """The smallest true difference a two-sided test at level alpha detects with the given power.

    Given `stderr` (of an observed difference, e.g. Comparison.stderr): (z_{1-alpha/2} + z_power)
    * stderr. Else the unpaired bound for two evaluations at `accuracy` on n problems, one
    sample's worth of variance per problem: (z_{1-alpha/2} + z_power) * sqrt(2 p (1-p) / n).
    Pairing and several samples per problem only lower it: an upper bound before any result."""
    _check_positive("n_problems", n_problems)
    z, variance = _power_terms(alpha, power, accuracy)
    if stderr is not None:
        _check_positive("stderr", stderr)
        return z * stderr
    return z * math.sqrt(variance / n_problems)


def problems_needed(difference: float, accuracy: float = 0.5, *, alpha: float = 0.05,
                    power: float = 0.8, n_problems: float | None = None,
                    stderr: float | None = None) -> int:
    """How many problems detect `difference`: ceil((z_a + z_b)^2 * 2p(1-p) / d^2), the unpaired
    bound, or, given an observed `stderr` on `n_problems`, ceil(n_problems * ((z_a + z_b) *
    stderr / d)^2): the problem-sampling part of the error scales as 1/sqrt(n). At least 1."""
    _check_positive("difference", difference)
    z, variance = _power_terms(alpha, power, accuracy)
    if (n_problems is None) != (stderr is None):
        raise ValueError("n_problems and stderr go together: the stderr observed on n problems")
    if stderr is not None:
        _check_positive("stderr", stderr)
        _check_positive("n_problems", n_problems)
        return max(1, math.ceil(n_problems * (z * stderr / difference) ** 2))
    return max(1, math.ceil(z * z * variance / difference**2))
