"""Reading datasets into problem rows: local jsonl/json/parquet files and hub datasets (``hf:``).

A source is read into records (`read_records`), and the records are mapped into rows
``{problem_id, problem, answer}`` through a field mapping (`FieldMap`) and a gold-answer
transform (`AnswerTransform`) by `usable_rows`. Records that cannot be used (a missing field, no
answer where the transform needs one, a duplicate id, a jsonl line that is not JSON) are never
dropped silently: each comes back as a bad row ``{benchmark, index, reason, record}``, and the
caller writes them aside and counts them. A source expected to hold a given number of records
is checked on read, so a truncated download or a wrong split fails loudly.

Both the problems stage (training and held-out problems from a dataset) and evaluation (its
benchmarks, `mixray.evaluate.benchmarks`) read datasets here. This module imports no Ray:
`mixray.problems.config` reads its field mappings from a sweep file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mixray.grading.extract import last_boxed, last_number
from mixray.grading.grade import AnswerFormat
from mixray.schema import Strict

log = logging.getLogger(__name__)

AnswerTransform = Literal["as_is", "last_boxed", "after_hashes", "join_list"]
"""How the gold answer is taken from the answer field: ``as_is``; ``last_boxed`` from a worked
solution (MATH); ``after_hashes`` the text after ``####`` (GSM8K); ``join_list`` a list of answers
(OlympiadBench's ``final_answer``), ``$`` stripped, joined by ``, ``."""
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class FieldMap(Strict):
    """Which columns of a dataset hold the problem, the gold answer and (optionally) an id."""

    problem: str = Field("problem", description="Column with the problem text.")
    answer: str = Field("answer", description="Column the gold answer is taken from.")
    id: str | None = Field(None, description="Column with a unique id; omitted: the row index.")


def source_name(path: str, config: str | None, split: str) -> str:
    """How a source is named in messages: a hub dataset with its config and split."""
    return path + (f" ({config}/{split})" if path.startswith("hf:") else "")


def read_records(path: str, config: str | None = None, split: str = "test") -> list[Any]:
    """The records of ``hf:owner/name`` (``config``, ``split``) or of a local file, in order."""
    if path.startswith("hf:"):
        return read_hub(path[3:], config, split)
    return read_local(Path(path))


def usable_rows(name: str, records: list[Any], fields: FieldMap, transform: AnswerTransform,
                answer_format: AnswerFormat = "lenient", *, source: str,
                expected_size: int | None = None,
                ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """(problem rows, bad rows) of ``records`` read from ``source``: a ValueError when the
    source does not hold ``expected_size`` records or none of them is usable."""
    if expected_size is not None and len(records) != expected_size:
        raise ValueError(
            f"benchmark {name!r}: {source} holds {len(records)} records, expected "
            f"{expected_size}; wrong file, split or a partial download?")
    rows, bad = map_records(name, records, fields, transform, answer_format)
    if not rows:
        reasons = sorted({b["reason"] for b in bad})[:3]
        raise ValueError(f"benchmark {name!r}: none of the {len(records)} records of "
                         f"{source} is usable ({'; '.join(reasons) or 'empty'})")
    if bad:
        log.warning("benchmark %s: %d of %d records unusable (written aside with reasons)",
                    name, len(bad), len(records))
    return rows, bad


def map_records(name: str, records: list[Any], fields: FieldMap, transform: AnswerTransform,
                answer_format: AnswerFormat = "lenient",
                ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Records -> (problem rows, bad rows with reasons), in record order."""
    rows: list[dict[str, str]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, record in enumerate(records):
        try:
            row = _map_record(name, i, record, fields, transform)
            if answer_format == "last_number" and last_number(row["answer"]) is None:
                raise ValueError(f"gold answer {row['answer']!r} has no number to compare")
            if row["problem_id"] in seen:
                raise ValueError(f"duplicate id {row['problem_id']!r}")
        except ValueError as e:
            raw = (record.line if isinstance(record, _Unreadable)
                   else json.dumps(record, default=str))
            bad.append({"benchmark": name, "index": i, "reason": str(e), "record": raw[:2000]})
            continue
        seen.add(row["problem_id"])
        rows.append(row)
    return rows, bad


def _present(record: dict[str, Any], key: str) -> Any:
    value = record.get(key)
    if value is None or (isinstance(value, str | list) and not value):
        raise ValueError(f"missing field {key!r}" if key not in record else f"empty field {key!r}")
    return value


def _map_record(name: str, i: int, record: Any, fields: FieldMap,
                transform: AnswerTransform) -> dict[str, str]:
    if isinstance(record, _Unreadable):
        raise ValueError(record.reason)
    if not isinstance(record, dict):
        raise ValueError(f"not an object but {type(record).__name__}")
    problem = str(_present(record, fields.problem)).strip()
    answer = gold_answer(_present(record, fields.answer), transform)
    pid = str(_present(record, fields.id)) if fields.id else f"{name}/{i}"
    if not problem:
        raise ValueError(f"empty field {fields.problem!r}")
    return {"problem_id": pid, "problem": problem, "answer": answer}


def gold_answer(value: Any, transform: AnswerTransform) -> str:
    """The gold answer from a dataset's answer field (raises ValueError when there is none)."""
    if transform == "join_list":
        items = value if isinstance(value, list | tuple) else [value]
        parts = [str(v).strip().strip("$").strip() for v in items]
        answer = ", ".join(p for p in parts if p)
    elif transform == "after_hashes":
        text = str(value)
        if "####" not in text:
            raise ValueError("answer has no '####' line")
        answer = text.rsplit("####", 1)[1].strip()
    elif transform == "last_boxed":
        answer = last_boxed(str(value)) or ""
        if not answer:
            raise ValueError("solution has no \\boxed{} answer")
    else:
        answer = str(value).strip()
    if not answer:
        raise ValueError("empty gold answer")
    return answer


@dataclass(frozen=True)
class _Unreadable:
    """A line of a jsonl file that is not JSON: becomes a bad row, not a crash."""

    reason: str
    line: str


def read_local(path: Path) -> list[Any]:
    """The records of a local .jsonl/.json/.parquet file (a bad jsonl line: `_Unreadable`)."""
    if not path.is_file():
        raise ValueError(f"benchmark file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json benchmark must hold a list of records")
        return data
    if path.suffix == ".jsonl":
        records: list[Any] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue  # blank lines (a trailing newline) are not records
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                records.append(_Unreadable(f"line {n} is not valid JSON ({e.msg})", line))
        return records
    raise ValueError(f"benchmark file {path}: expected {', '.join(LOCAL_SUFFIXES)}")


def read_hub(dataset_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """The records of a hub dataset's split (needs the optional `datasets` package)."""
    try:
        import datasets  # optional: only clusters with hub access need it
    except ImportError:
        raise ValueError(
            f"loading hf:{dataset_id} needs the 'datasets' package (pip install datasets) and "
            "access to the Hugging Face hub; offline, pass a local copy instead: NAME=PATH.jsonl"
        ) from None
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # noqa: BLE001 - network, auth, unknown split: one readable error
        raise ValueError(f"could not load hf:{dataset_id} (config {config}, split {split}): "
                         f"{type(e).__name__}: {e}") from e
    return list(ds.to_list())
