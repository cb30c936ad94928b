"""Answer extraction, verification and curation statistics."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mixray.artifacts import StageDir
from mixray.curate.config import CurateConfig
from mixray.curate.stage import curate, score, stats
from mixray.grading.extract import extract_answer, last_boxed
from mixray.grading.verify import is_correct


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),  # the last box counts
        ("\\boxed{\\sqrt{\\frac{1}{2}}}", "\\sqrt{\\frac{1}{2}}"),  # nested braces
        ("Final Answer: 17.", "17"),
        ("Final answer: $-3$", "-3"),
        ("we get 3, then 1,250 in total", "1250"),  # last number, commas removed
        ("no digits here", None),
        ("cut off inside \\boxed{12", "12"),  # an unbalanced box falls back to the last number
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_last_boxed_of_unbalanced_box_is_none() -> None:
    assert last_boxed("\\boxed{\\frac{1}{2}") is None


@pytest.mark.parametrize(
    ("predicted", "gold", "ok"),
    [("\\frac{1}{2}", "0.5", True), ("12", "12", True), ("-1", "-1", True), ("7", "8", False),
     (None, "3", False), ("1" * 400, "1", False), ("\\dfrac{6}{4}", "3/2", True)],
)
def test_is_correct(predicted, gold, ok) -> None:
    assert is_correct(predicted, gold) is ok


def _generations() -> pa.Table:
    return pa.table({
        "problem_id": ["a", "b", "c", "d"],
        "answer": ["2", "3", "4", "5"],
        "completion": ["Final Answer: \\boxed{2}", "\\boxed{4}", "I am not sure", "so 5"],
        "n_tokens": [10, 20, 30, 40],
        "finish_reason": ["stop", "stop", "length", "stop"],
        "sample_idx": pa.array([0, 0, 0, 0], pa.int32()),
    })


def test_score_and_stats() -> None:
    scored = score(_generations())
    assert scored["correct"].to_pylist() == [True, False, False, True]
    assert scored["extracted"].to_pylist() == ["2", "4", None, "5"]
    s = stats(scored)
    assert s["rows"] == 4 and s["accepted"] == 2
    assert s["acceptance_rate"] == 0.5
    assert s["no_answer_rate"] == 0.25 and s["truncation_rate"] == 0.25
    assert s["tokens_mean"] == 25.0 and s["tokens_p50"] == 25.0


def test_score_names_missing_columns() -> None:
    with pytest.raises(ValueError, match="answer"):
        score(_generations().drop(["answer"]))


@pytest.mark.parametrize(("predicted", "gold", "expected"), [
    ("\\frac{1}{2}", "0.5", (True, "math_verify")),
    ("7", "8", (False, "math_verify")),
    ("}", "}", (True, "string")),  # math-verify parses neither side: the text decides
    ("$", "3", (False, "string")),
    (None, "3", (False, None)),  # nothing to compare
    ("1" * 400, "1", (False, None)),  # too long to parse: wrong, not compared
])
def test_verify_answer_says_how_it_decided(predicted, gold, expected) -> None:
    from mixray.grading.verify import verify_answer

    assert verify_answer(predicted, gold) == expected
    assert is_correct(predicted, gold) is expected[0]


def test_curation_counts_answers_compared_as_text() -> None:
    table = _generations()
    table = table.set_column(table.schema.get_field_index("completion"), "completion",
                             pa.array(["\\boxed{2}", "\\boxed{\\$}", "no idea", "so 5"]))
    scored = score(table)
    assert scored["correct"].to_pylist() == [True, False, False, True]
    assert scored["verified_by"].to_pylist() == ["math_verify", "string", None, "math_verify"]
    s = stats(scored)
    assert s["string_fallback"] == 1 and s["string_fallback_rate"] == 0.25


def test_a_failed_row_is_an_error_not_a_missing_answer_and_never_pooled(tmp_path) -> None:
    table = _generations()
    reasons = table["finish_reason"].to_pylist()
    reasons[3] = "error"  # the engine failed this row: its completion stands for nothing
    table = table.set_column(table.schema.get_field_index("finish_reason"), "finish_reason",
                             pa.array(reasons))
    table = table.set_column(table.schema.get_field_index("completion"), "completion",
                             pa.array(["Final Answer: \\boxed{2}", "\\boxed{4}", "I am not sure",
                                       ""]))
    s = stats(score(table))
    assert s["error_rate"] == 0.25 and s["no_answer_rate"] == 0.25  # row c only
    gen = StageDir(tmp_path, "generate", {"x": 1})
    (gen.path / "data").mkdir(parents=True)
    pq.write_table(table, gen.path / "data" / "part-0.parquet")
    cur, _, _ = curate(gen, CurateConfig(keep="all"), tmp_path)
    pool = pq.read_table(cur.path / "pool.parquet")
    assert pool.num_rows == 3 and pc.sum(pc.equal(pool["finish_reason"], "error")).as_py() == 0


def test_a_pool_does_not_depend_on_the_order_generation_finished_its_batches(tmp_path) -> None:
    """Generation parts arrive in the order their batches finished; the mix draws rows by
    position, so the pool must come out in one order whatever order they arrived in."""
    table = _generations()
    pools = []
    for name, rows in (("in-order", table), ("reversed", table.take([3, 2, 1, 0]))):
        gen = StageDir(tmp_path / name, "generate", {"x": 1})
        (gen.path / "data").mkdir(parents=True)
        pq.write_table(rows.slice(0, 2), gen.path / "data" / "part-a-00000.parquet")
        pq.write_table(rows.slice(2), gen.path / "data" / "part-a-00001.parquet")
        cur, _, _ = curate(gen, CurateConfig(keep="all"), tmp_path / name)
        pools.append(pq.read_table(cur.path / "pool.parquet"))
    assert pools[0].equals(pools[1])
    assert pools[0]["problem_id"].to_pylist() == ["a", "b", "c", "d"]
