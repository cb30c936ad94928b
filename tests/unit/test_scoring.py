"""pass@k, maj@k, standard errors and per-benchmark metrics."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixray.evaluate.scoring import (
    average_over_benchmarks,
    benchmark_metrics,
    maj_at_k,
    pass_at_k,
)
from mixray.science.significance import mean_and_stderr


@st.composite
def _n_c_k(draw) -> tuple[int, int, int]:
    n = draw(st.integers(1, 300))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@given(_n_c_k())
def test_pass_at_k_matches_exact_combinatorial_formula(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # math.comb(a, b) is 0 for b > a
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_pass_at_k_known_values() -> None:
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 3 of the 6 pairs hold the correct one
    assert pass_at_k(5, 4, 2) == 1.0  # only one wrong sample: every pair has a correct one


def test_pass_at_k_is_stable_for_large_n() -> None:
    # C(10000, 100) overflows a float; the product form does not.
    assert 0.0 < pass_at_k(10_000, 1, 100) == pytest.approx(0.01)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (3, 4, 1), (0, 0, 1), (3, 1, 0), (3, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_maj_at_k_majority_and_prefix() -> None:
    answers = ["3", "5", "5", "3", "3"]
    flags = [True, False, False, True, True]
    assert maj_at_k(answers, flags, 3) == 0.0  # "5" wins 2-1 among the first three
    assert maj_at_k(answers, flags, 5) == 1.0  # "3" wins 3-2 over all five


def test_maj_at_k_tie_goes_to_first_seen_and_none_never_wins() -> None:
    assert maj_at_k(["5", "3", "3", "5"], [False, True, True, False], 4) == 0.0
    assert maj_at_k(["3", "5", "5", "3"], [True, False, False, True], 4) == 1.0
    assert maj_at_k([None, None, None, "3"], [False, False, False, True], 4) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0


def test_maj_at_k_votes_ignore_surrounding_whitespace() -> None:
    assert maj_at_k(["7", " 4", "4 "], [False, True, True], 3) == 1.0


@pytest.mark.parametrize(("answers", "flags", "k"), [(["1"], [True, False], 1), (["1"], [True], 2),
                                                      (["1"], [True], 0)])
def test_maj_at_k_rejects_bad_arguments(answers, flags, k) -> None:
    with pytest.raises(ValueError):
        maj_at_k(answers, flags, k)


def test_mean_and_stderr_known_case() -> None:
    # mean 5, sample variance 32/7, stderr sqrt(32/7/8) = sqrt(4/7)
    mean, stderr = mean_and_stderr([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == 5.0
    assert stderr == pytest.approx(math.sqrt(4 / 7))


def test_mean_and_stderr_single_value_and_empty() -> None:
    mean, stderr = mean_and_stderr([0.25])  # one value: its error is unknown, not 0
    assert mean == 0.25 and math.isnan(stderr)
    with pytest.raises(ValueError):
        mean_and_stderr([])


def _row(pid: str, idx: int, extracted: str | None, correct: bool, tokens: int = 10,
         finish: str = "stop") -> dict:
    return {"problem_id": pid, "sample_idx": idx, "extracted": extracted, "correct": correct,
            "n_tokens": tokens, "finish_reason": finish}


def _rows() -> list[dict]:
    # Problem a: 3 of 4 correct. Problem b: 1 of 4 correct, one cut off with no answer.
    return [
        _row("a", 0, "2", True), _row("a", 1, "2", True), _row("a", 2, "3", False),
        _row("a", 3, "2", True, tokens=30),
        _row("b", 3, "9", True), _row("b", 0, "8", False), _row("b", 1, "8", False),
        _row("b", 2, None, False, tokens=50, finish="length"),
    ]


def test_benchmark_metrics() -> None:
    m = benchmark_metrics(_rows(), ks=[1, 2, 4, 8])
    assert m["accuracy"] == pytest.approx(0.5)  # (3/4 + 1/4) / 2
    assert m["accuracy_stderr"] == pytest.approx(0.25)  # std of [0.75, 0.25] is sqrt(1/8), / sqrt 2
    assert m["pass@1"] == pytest.approx(0.5)
    assert m["pass@2"] == pytest.approx((1.0 + pass_at_k(4, 1, 2)) / 2)
    assert m["pass@4"] == 1.0
    assert "pass@8" not in m and "maj@8" not in m  # only 4 samples a problem
    assert m["maj@1"] == pytest.approx(0.5)  # sample 0: a right, b wrong
    assert m["maj@4"] == pytest.approx(0.5)  # a: "2" wins; b: "8" wins
    assert m["response_tokens_mean"] == pytest.approx((6 * 10 + 30 + 50) / 8)
    assert m["truncation_rate"] == pytest.approx(1 / 8)
    assert m["no_answer_rate"] == pytest.approx(1 / 8)
    assert m["error_rate"] == 0.0
    assert (m["n_problems"], m["n_samples"]) == (2, 8)


def test_a_thinking_models_reasoning_and_answer_lengths_are_measured() -> None:
    """Issue 28: reasoning and answer tokens per sample (mean, median, p95) and the share of
    samples whose reasoning hit the length limit; none of it for a model that does not think."""
    rows = [_row("a", i, "2", True, tokens=110) | {"reasoning_tokens": 100,
                                                    "reasoning_cut": False} for i in range(3)]
    rows.append(_row("a", 3, None, False, tokens=400, finish="length")
                | {"reasoning_tokens": 400, "reasoning_cut": True})
    m = benchmark_metrics(rows)
    assert m["reasoning_tokens_mean"] == pytest.approx(175.0)
    assert m["reasoning_tokens_median"] == 100.0
    assert m["reasoning_tokens_p95"] == pytest.approx(100 + 0.85 * 300)  # numpy's linear rule
    assert m["answer_tokens_mean"] == pytest.approx(7.5) and m["answer_tokens_median"] == 10.0
    assert m["reasoning_cut_rate"] == 0.25
    assert not any(k.startswith(("reasoning", "answer_tokens")) for k in benchmark_metrics(_rows()))


def test_benchmark_metrics_counts_engine_errors() -> None:
    rows = _rows()
    rows[1] = _row("a", 1, None, False, tokens=0, finish="error")  # the engine failed this one
    m = benchmark_metrics(rows)
    assert m["error_rate"] == pytest.approx(1 / 8)
    # a failed generation is counted as an error, not as a completion without an answer
    assert m["no_answer_rate"] == pytest.approx(1 / 8)


def test_benchmark_metrics_orders_samples_by_index() -> None:
    # Rows arrive shuffled; maj@1 must use sample 0 ("8", wrong) of problem b, not sample 3.
    rows = [r for r in _rows() if r["problem_id"] == "b"]
    assert benchmark_metrics(rows, ks=[1])["maj@1"] == 0.0


def test_benchmark_metrics_rejects_bad_rows() -> None:
    with pytest.raises(ValueError, match="no scored rows"):
        benchmark_metrics([])
    with pytest.raises(ValueError, match="duplicate"):
        benchmark_metrics([_row("a", 0, "1", True), _row("a", 0, "1", True)])
    incomplete = _row("a", 0, "1", True)
    del incomplete["finish_reason"]
    with pytest.raises(ValueError, match="finish_reason"):
        benchmark_metrics([incomplete])


def test_average_over_benchmarks_is_unweighted() -> None:
    per_benchmark = {"math": {"accuracy": 0.6, "n_problems": 500},
                     "aime": {"accuracy": 0.0, "n_problems": 30}}
    assert average_over_benchmarks(per_benchmark) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        average_over_benchmarks({})
    with pytest.raises(ValueError, match="gsm8k"):
        average_over_benchmarks({"gsm8k": {"n_problems": 3}})


@pytest.mark.parametrize("unknown", [{}, {"accuracy_stderr": None},
                                     {"accuracy_stderr": math.nan}])
def test_an_unknown_benchmark_error_makes_the_average_error_unknown(unknown) -> None:
    """Not 0: that would make P look more precise than the benchmarks it averages."""
    from mixray.evaluate.scoring import average_metrics

    per = {"math": {"accuracy": 0.6, "accuracy_stderr": 0.03}, "aime": {"accuracy": 0.2} | unknown}
    avg = average_metrics(per)
    assert avg["accuracy"] == pytest.approx(0.4) and math.isnan(avg["accuracy_stderr"])
    known = average_metrics({"math": per["math"],
                             "aime": {"accuracy": 0.2, "accuracy_stderr": 0.04}})
    assert known["accuracy_stderr"] == pytest.approx(0.025)


def test_a_one_problem_benchmark_has_an_unknown_error_and_prints_as_such() -> None:
    from mixray.evaluate.__main__ import format_summary
    from mixray.evaluate.scoring import average_metrics

    m = benchmark_metrics([_row("a", 0, "2", True)]) | {"bad_rows": 0}
    assert m["accuracy"] == 1.0 and math.isnan(m["accuracy_stderr"])
    avg = average_metrics({"one": m})
    assert math.isnan(avg["accuracy_stderr"])
    table = format_summary({"benchmarks": {"one": m}, "average": avg, "n_samples": 1})
    assert "± 0.000" not in table and "1.000 ± nan" in table


def test_benchmark_metrics_count_answers_compared_as_text() -> None:
    rows = [r | {"verified_by": by} for r, by in zip(
        _rows(), ["math_verify", "string", "math_verify", "math_verify", "string", "string",
                  "math_verify", None], strict=True)]
    assert benchmark_metrics(rows)["string_fallback"] == 3
    assert "string_fallback" not in benchmark_metrics(_rows())  # rows that do not say
