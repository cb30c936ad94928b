"""Problem sources: reasoning-gym (the old flat keys still read) and datasets (local files here;
hub ids go through the same loader), with held-out sets carved by seed or read from their own
file, and every unusable record counted and written aside with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from mixray.problems.config import DatasetSource, ProblemsConfig, ReasoningGymSource
from mixray.problems.stage import build_problems, problems_stage, problems_summary

N_GOOD = 30


def _jsonl(path: Path, records: list, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(n: int = N_GOOD, offset: int = 0) -> list[dict]:
    # GSM8K-like: the answer is the text after '####'
    return [{"question": f"What is {i} + {i}?", "solution": f"double it #### {2 * i}",
             "uid": f"q{i}"} for i in range(offset, offset + n)]


def _bad_records() -> list:
    return [{"question": "no answer here"},                       # missing field
            {"question": "What is 1 + 1?", "solution": "2"},      # no '####'
            {"question": "What is 0 + 0?", "solution": "#### 0", "uid": "dupe"},  # repeats q0's text
            {"question": "", "solution": "#### 1"},               # empty problem
            ["not", "an", "object"]]


def _source(path: Path, **kw) -> dict:
    return {"kind": "dataset", "path": str(path),
            "fields": {"problem": "question", "answer": "solution"},
            "answer_transform": "after_hashes"} | kw


def _cfg(source: dict, **kw) -> ProblemsConfig:
    return ProblemsConfig.model_validate({"source": source} | kw)


def _read(stage, name: str) -> list[dict]:
    return pq.read_table(stage.path / f"{name}.parquet").to_pylist()


def test_carved_held_out_is_disjoint_seeded_and_bad_rows_written(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "mine.jsonl", _records() + _bad_records(), ("{broken json",))
    cfg = _cfg(_source(data), train_size=20, eval_size=6, seed=7)
    stage, reused = build_problems(cfg, tmp_path / "runs")
    assert not reused
    train, held, bad = _read(stage, "train"), _read(stage, "eval"), _read(stage, "bad_rows")
    assert len(train) == 20 and len(held) == 6
    assert not {r["problem"] for r in train} & {r["problem"] for r in held}
    assert all(r["answer"] == str(2 * int(r["problem"].split()[2])) for r in train + held)
    assert len({r["problem_id"] for r in train + held}) == 26
    # six unusable records: each counted once, with its reason and its index in the file
    assert len(bad) == 6 and {b["split"] for b in bad} == {"train"}
    reasons = {b["index"]: b["reason"] for b in bad}
    assert sorted(reasons) == [30, 31, 32, 33, 34, 35]
    assert "missing field 'solution'" in reasons[30] and "'####'" in reasons[31]
    assert "repeats the problem text" in reasons[32] and "not valid JSON" in reasons[35]
    assert problems_summary(stage) == {"source": cfg.describe(), "train": 20, "eval": 6,
                                       "bad_rows": 6, "bad_rows_by_split": {"train": 6}}

    again, reused = build_problems(cfg, tmp_path / "runs")
    assert reused and again.path == stage.path
    other = build_problems(_cfg(_source(data), train_size=20, eval_size=6, seed=8),
                           tmp_path / "runs2")[0]
    assert {r["problem_id"] for r in _read(other, "eval")} != {r["problem_id"] for r in held}
    same = build_problems(cfg, tmp_path / "runs3")[0]  # another root, same seed: same sets
    assert _read(same, "eval") == held and _read(same, "train") == train


def test_separate_held_out_file_drops_training_problems(tmp_path: Path) -> None:
    train_file = _jsonl(tmp_path / "train.jsonl", _records(12))
    # held-out: 10 new problems and 3 that are training problems (q0, q1, q2)
    test_file = _jsonl(tmp_path / "test.jsonl", _records(3) + _records(10, offset=100))
    cfg = _cfg(_source(train_file, eval_path=str(test_file), fields={
        "problem": "question", "answer": "solution", "id": "uid"}), train_size="all",
        eval_size="all")
    stage, _ = build_problems(cfg, tmp_path / "runs")
    train, held, bad = _read(stage, "train"), _read(stage, "eval"), _read(stage, "bad_rows")
    assert len(train) == 12 and [r["problem_id"] for r in train[:2]] == ["q0", "q1"]
    assert len(held) == 10 and not {r["problem"] for r in train} & {r["problem"] for r in held}
    assert len(bad) == 3 and all(b["split"] == "eval" and "also the training problem" in
                                 b["reason"] for b in bad)


def test_parquet_source_and_too_few_records(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(_records(8)), path)
    stage, _ = build_problems(_cfg(_source(path), train_size=5, eval_size=3), tmp_path / "r")
    assert len(_read(stage, "train")) == 5 and len(_read(stage, "bad_rows")) == 0
    with pytest.raises(ValueError, match="8 usable records.*fewer than the 9"):
        build_problems(_cfg(_source(path), train_size=6, eval_size=3), tmp_path / "r")


def test_edited_file_gets_a_new_key(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "d.jsonl", _records(10))
    cfg = _cfg(_source(data), train_size=5, eval_size=2)
    before = problems_stage(cfg, tmp_path).key
    _jsonl(data, _records(11))
    assert problems_stage(cfg, tmp_path).key != before


def test_missing_file_and_unusable_source_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        problems_stage(_cfg(_source(tmp_path / "nope.jsonl")), tmp_path)
    unusable = [r for r in _bad_records() if not (isinstance(r, dict) and "uid" in r)]
    empty = _jsonl(tmp_path / "bad.jsonl", unusable)
    with pytest.raises(ValueError, match="none of the 4 records"):
        build_problems(_cfg(_source(empty), train_size=1, eval_size=1), tmp_path)


def test_reasoning_gym_source_reads_and_dumps_back() -> None:
    cfg = ProblemsConfig.model_validate({"source": {"kind": "reasoning_gym",
                                                    "task": "basic_arithmetic",
                                                    "task_args": {"max_terms": 2}},
                                         "train_size": 4, "eval_size": 2})
    assert isinstance(cfg.source, ReasoningGymSource) and cfg.source.task == "basic_arithmetic"
    # a dumped config validates back to itself (trials re-validate the sweep)
    assert ProblemsConfig.model_validate(cfg.model_dump()) == cfg


@pytest.mark.parametrize(("data", "expected"), [
    ({"task": "basic_arithmetic", "task_args": {"max_terms": 2}},
     r"problems.task: moved to problems.source: \{kind: reasoning_gym, task: ...\}"),
    ({"task_args": {"max_terms": 2}}, r"problems.task_args: moved to problems.source"),
    ({"source": "reasoning_gym"}, r"write problems.source: \{kind: reasoning_gym, ...\}"),
])
def test_earlier_flat_form_is_refused_naming_the_new_key(data: dict, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        ProblemsConfig.model_validate(data)


@pytest.mark.parametrize(("data", "expected"), [
    ({"source": {"kind": "reasoning_gym", "task": "no_such_task"}}, "unknown reasoning-gym task"),
    ({"source": {"kind": "dataset", "path": "data.csv"}}, "neither 'hf:owner/name'"),
    ({"source": {"kind": "dataset", "path": "x.jsonl", "eval_split": "test"}}, "give eval_path"),
    ({"source": {"kind": "dataset", "path": "hf:a/b", "eval_split": "train"}},
     "is the training source"),
    ({"source": {"kind": "dataset", "path": "x.jsonl"}, "eval_size": "all"},
     "needs a separate held-out source"),
    ({"train_size": "all"}, "'all' needs a dataset source"),
    ({"train_size": 0}, "a count >= 1"),
])
def test_problem_mistakes_are_refused(data: dict, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        ProblemsConfig.model_validate(data)


def test_hub_source_describes_its_splits() -> None:
    cfg = ProblemsConfig(source=DatasetSource(kind="dataset", path="hf:openai/gsm8k",
                                              config="main", eval_split="test"),
                         train_size="all", eval_size="all")
    assert cfg.describe() == ("all train + all held-out from hf:openai/gsm8k [train], held out "
                              "from hf:openai/gsm8k [test]")
