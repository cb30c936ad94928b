"""Training problems that overlap an evaluation benchmark are set aside before generation and
counted per benchmark (issue 28, item 5): open-r1's 8-word rule, plus whole short texts; an
error on request; off on request; cached by what decides it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixray.artifacts import StageDir
from mixray.problems.config import DecontaminateConfig
from mixray.problems.decontaminate import decontaminate, decontaminate_stage, overlaps

LONG = "Let x be the smallest positive integer such that x squared exceeds one hundred. Find x."
TRAIN = [
    LONG.upper().replace(" ", "   "),                      # the same problem, other spacing/case
    "A farmer has 17 cows and buys 5 more. How many cows does the farmer have now?",
    "Compute $\\dbinom{8}{4}$.",                           # short: overlaps only as a whole
    "What is 2 + 3?",
    # shares a run of 7 words with the benchmark's problem, not 8: kept
    "Let x be the smallest positive integer above y.",
]
BENCHMARKS = {
    "math500": ["compute $\\dbinom{8}{4}$.", f"Prove it. {LONG} Then stop."],
    "gsm8k": ["A farmer has 17 cows and buys 5 more. How many cows does he have?"],
    "heldout": ["What is 4 + 5?"],
}


def test_an_eight_word_run_or_a_whole_short_text_is_an_overlap() -> None:
    found = overlaps(TRAIN, BENCHMARKS, 8)
    assert found == {"math500": [0, 2], "gsm8k": [1], "heldout": []}
    # a 15-word problem has no run of 20 words: at n 20 only whole texts shorter than that match
    assert overlaps(TRAIN, BENCHMARKS, 20)["math500"] == [2]


def _problems(tmp_path: Path) -> StageDir:
    stage = StageDir(tmp_path, "problems", {"v": 1})
    tmp = stage.staging()
    table = pa.table({"problem_id": [f"p{i}" for i in range(len(TRAIN))], "problem": TRAIN,
                      "answer": ["10", "22", "70", "5", "2"]})
    pq.write_table(table, tmp / "train.parquet")
    pq.write_table(table.slice(3, 1), tmp / "eval.parquet")
    pq.write_table(pa.table({"index": pa.array([], pa.int64())}), tmp / "bad_rows.parquet")
    (tmp / "summary.json").write_text(json.dumps({"train": 5, "eval": 1, "bad_rows": 0}))
    stage.commit(tmp)
    return stage


def test_overlapping_problems_are_set_aside_counted_and_cached(tmp_path: Path) -> None:
    problems = _problems(tmp_path)
    cfg = DecontaminateConfig()
    clean = decontaminate(problems, BENCHMARKS, cfg, tmp_path)
    kept = pq.read_table(clean.path / "train.parquet")["problem_id"].to_pylist()
    assert kept == ["p3", "p4"]
    dropped = pq.read_table(clean.path / "dropped.parquet").to_pylist()
    assert [(r["problem_id"], r["benchmarks"]) for r in dropped] == [
        ("p0", "math500"), ("p1", "gsm8k"), ("p2", "math500")]
    summary = json.loads((clean.path / "summary.json").read_text())
    assert summary["train"] == 2 and summary["eval"] == 1
    assert summary["decontamination"]["dropped"] == {"math500": 2, "gsm8k": 1, "heldout": 0}
    assert summary["decontamination"]["dropped_total"] == 3
    assert pq.read_table(clean.path / "eval.parquet").equals(
        pq.read_table(problems.path / "eval.parquet"))
    # cached: the same problems, benchmarks and rule reuse it; other benchmarks or n do not
    assert decontaminate(problems, BENCHMARKS, cfg, tmp_path).key == clean.key
    fewer = {k: v for k, v in BENCHMARKS.items() if k != "gsm8k"}
    assert decontaminate_stage(problems, fewer, cfg, tmp_path).key != clean.key
    assert decontaminate_stage(problems, BENCHMARKS, DecontaminateConfig(ngram=13),
                               tmp_path).key != clean.key
    # ...and whether an overlap is an error is not part of what is written
    assert decontaminate_stage(problems, BENCHMARKS, DecontaminateConfig(mode="error"),
                               tmp_path).key == clean.key


def test_an_overlap_is_an_error_when_asked_and_nothing_is_checked_when_off(
        tmp_path: Path) -> None:
    problems = _problems(tmp_path)
    with pytest.raises(ValueError, match=r"overlap the evaluation: math500 2, gsm8k 1"):
        decontaminate(problems, BENCHMARKS, DecontaminateConfig(mode="error"), tmp_path)
    assert decontaminate(problems, BENCHMARKS, DecontaminateConfig(mode="off"),
                         tmp_path) == problems
    clean = decontaminate(problems, {"heldout": BENCHMARKS["heldout"]},
                          DecontaminateConfig(mode="error"), tmp_path)
    assert pq.read_table(clean.path / "train.parquet").num_rows == 5  # no overlap: no error
