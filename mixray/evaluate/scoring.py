"""Benchmark statistics from scored samples: accuracy with its standard error, pass@k, maj@k,
response lengths, truncation and no-answer rates, and the paper's P (mean accuracy over benchmarks).

Pure Python on plain rows (``table.to_pylist()`` of a scored generation table), so it runs the same
in a test, a driver or an actor.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mixray.grading.rates import sample_rates
from mixray.science.significance import mean_and_stderr

ROW_KEYS = ("problem_id", "sample_idx", "extracted", "correct", "n_tokens", "finish_reason")
RATE_ORDER = ("truncation_rate", "no_answer_rate", "error_rate")  # as metrics.json lists them


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k) for n samples, c correct.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    if n < 1 or k < 1 or c < 0:
        raise ValueError(f"pass@k needs n >= 1, k >= 1, c >= 0; got n={n}, c={c}, k={k}")
    if k > n or c > n:
        raise ValueError(f"pass@k needs k <= n and c <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def maj_at_k(answers: Sequence[str | None], correct_flags: Sequence[bool], k: int) -> float:
    """1.0 if the most frequent answer among the first ``k`` samples is correct, else 0.0.

    Answers vote by exact text (whitespace-stripped), as in common harnesses: equivalent spellings
    ("0.5", "\\frac{1}{2}") split their vote. Ties go to the answer seen first; None never wins.
    """
    if len(answers) != len(correct_flags):
        raise ValueError(f"{len(answers)} answers but {len(correct_flags)} correct flags")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= {len(answers)} samples; got k={k}")
    keys = [a.strip() if a is not None else None for a in answers[:k]]
    votes = Counter(key for key in keys if key)
    if not votes:
        return 0.0
    # Counter.most_common keeps first-seen order among equal counts, so ties go to the earliest.
    winner = votes.most_common(1)[0][0]
    return 1.0 if correct_flags[keys.index(winner)] else 0.0


def _group_by_problem(rows: Iterable[Mapping[str, Any]]) -> dict[Any, list[Mapping[str, Any]]]:
    """Rows per problem, each list sorted by sample_idx (maj@k uses the first k samples)."""
    groups: dict[Any, dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for row in rows:
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"scored row lacks {missing}; has {sorted(row)}")
        samples = groups[row["problem_id"]]
        if row["sample_idx"] in samples:
            pid, idx = row["problem_id"], row["sample_idx"]
            raise ValueError(f"duplicate sample {idx} of problem {pid!r}")
        samples[row["sample_idx"]] = row
    if not groups:
        raise ValueError("no scored rows")
    return {pid: [s[i] for i in sorted(s)] for pid, s in groups.items()}


def _sample_rates(samples: list[Mapping[str, Any]]) -> dict[str, float]:
    """Mean response length and `grading.rates.sample_rates`, in the order metrics list them;
    for a thinking model, its reasoning and answer lengths too (`reasoning_lengths`)."""
    # a failed generation is an error, not a completion without an answer
    rates = sample_rates([s["extracted"] for s in samples],
                         [s["finish_reason"] for s in samples])
    tokens = math.fsum(s["n_tokens"] for s in samples) / len(samples)
    return ({"response_tokens_mean": tokens} | {key: rates[key] for key in RATE_ORDER}
            | reasoning_lengths(samples))


def reasoning_lengths(samples: list[Mapping[str, Any]]) -> dict[str, float]:
    """Where samples counted reasoning tokens (a thinking model): reasoning and answer tokens per
    sample (mean, median, p95) and the share whose reasoning never closed within the length
    limit (``reasoning_cut_rate``): the learnability gap is about length, so it is measured.
    {} for a model without reasoning; failed samples are left out."""
    counted = [s for s in samples if s.get("reasoning_tokens") is not None
               and s["finish_reason"] != "error"]
    if not counted:
        return {}
    out: dict[str, float] = {}
    for name, values in (("reasoning", [s["reasoning_tokens"] for s in counted]),
                         ("answer", [s["n_tokens"] - s["reasoning_tokens"] for s in counted])):
        ranked = sorted(values)
        out |= {f"{name}_tokens_mean": math.fsum(ranked) / len(ranked),
                f"{name}_tokens_median": _quantile(ranked, 0.5),
                f"{name}_tokens_p95": _quantile(ranked, 0.95)}
    out["reasoning_cut_rate"] = sum(bool(s.get("reasoning_cut")) for s in counted) / len(counted)
    return out


def _quantile(ranked: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, linearly interpolated (numpy's default)."""
    position = q * (len(ranked) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ranked) - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)


def benchmark_metrics(
    rows: Iterable[Mapping[str, Any]], ks: Sequence[int] = (1,)
) -> dict[str, float]:
    """Metrics of one benchmark from per-sample rows with keys ``ROW_KEYS``.

    ``accuracy`` is pass@1 averaged over each problem's samples, then over problems;
    ``accuracy_stderr`` is its standard error over problems (NaN, unknown, for one problem).
    ``pass@k`` and ``maj@k`` are reported for each k in ``ks`` that every problem has samples for
    (k <= the smallest n). Rows that say how their answer was compared (``verified_by``, as the
    evaluation stage's do) give ``string_fallback``: the samples compared as text because
    math-verify could not parse the answer or the gold.
    """
    problems = _group_by_problem(rows)
    flags = {pid: [bool(s["correct"]) for s in samples] for pid, samples in problems.items()}
    accuracy, stderr = mean_and_stderr([sum(f) / len(f) for f in flags.values()])
    metrics: dict[str, float] = {"accuracy": accuracy, "accuracy_stderr": stderr}
    min_n = min(len(f) for f in flags.values())
    for k in sorted({k for k in ks if k <= min_n}):
        metrics[f"pass@{k}"] = _mean(pass_at_k(len(f), sum(f), k) for f in flags.values())
        metrics[f"maj@{k}"] = _mean(
            maj_at_k([s["extracted"] for s in problems[pid]], flags[pid], k) for pid in problems
        )
    all_samples = [s for samples in problems.values() for s in samples]
    metrics |= _sample_rates(all_samples)
    checked = [s["verified_by"] for s in all_samples if "verified_by" in s]
    if checked:
        assert len(checked) == len(all_samples), "a stage records verified_by on every row"
        metrics["string_fallback"] = checked.count("string")
    metrics |= {"n_problems": len(problems), "n_samples": len(all_samples)}
    return metrics


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.fsum(values) / len(values)


def average_over_benchmarks(metrics_by_benchmark: Mapping[str, Mapping[str, float]]) -> float:
    """The paper's P: the unweighted mean of each benchmark's ``accuracy``."""
    if not metrics_by_benchmark:
        raise ValueError("average_over_benchmarks needs at least one benchmark")
    missing = [name for name, m in metrics_by_benchmark.items() if "accuracy" not in m]
    if missing:
        raise ValueError(f"benchmarks without an accuracy: {missing}")
    return _mean(m["accuracy"] for m in metrics_by_benchmark.values())


# Rates that average over benchmarks like accuracy does (each benchmark weighs the same).
AVERAGED = ("response_tokens_mean", "truncation_rate", "no_answer_rate", "error_rate",
            "reasoning_tokens_mean", "reasoning_cut_rate")  # the last two: thinking models


def average_metrics(metrics_by_benchmark: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The paper's P with its standard error, and the unweighted means of the length and rate
    metrics. The benchmarks are independent samples, so the error of their mean is
    sqrt(sum of squared errors) / number of benchmarks; NaN (unknown) when one benchmark's error
    is unknown (missing, None or NaN), since taking it as 0 would understate the error."""
    p = average_over_benchmarks(metrics_by_benchmark)
    n = len(metrics_by_benchmark)
    errors = [_known_or_nan(m.get("accuracy_stderr")) for m in metrics_by_benchmark.values()]
    out = {"accuracy": p, "accuracy_stderr": math.sqrt(math.fsum(e * e for e in errors)) / n,
           "n_benchmarks": n}
    for key in AVERAGED:
        values = [m[key] for m in metrics_by_benchmark.values() if key in m]
        if len(values) == n:
            out[key] = _mean(values)
    return out


def _known_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def metric_name(key: str) -> str:
    """A metric key MLflow accepts: ``pass@4`` -> ``pass_at_4`` (``@`` is not allowed)."""
    return key.replace("@", "_at_")
