"""Reading datasets into problem rows: local jsonl/json/parquet files and hub datasets (``hf:``).

A source is read into records (`read_records`), and the records are mapped into rows
``{problem_id, problem, answer}`` through a field mapping (`FieldMap`) and a gold-answer
transform (`AnswerTransform`) by `usable_rows`. Records that cannot be used (a missing field, no
answer where the transform needs one, a duplicate id, a jsonl line that is not JSON) are never
dropped silently: each comes back as a bad row ``{benchmark, index, reason, record}``, and the
caller writes them aside and counts them. A source expected to hold a given number of records
is checked on read, so a truncated download or a wrong split fails loudly.

A hub dataset is named ``hf:owner/name`` or, pinned to a commit, tag or branch,
``hf:owner/name@revision``. On a cluster, nodes share nothing but the run root, so a sweep reads
each hub dataset once into ``<run_root>/datasets`` (`read_records` with ``cache``): one Parquet
file per (dataset, config, split, revision) with a JSON note beside it, read instead of the hub
from then on by every process on every node. A failed hub read caches nothing; local files are
never cached (they are read where they lie). An unpinned dataset is frozen at its first read
for that run root, which keeps a sweep's trials on the same records.

Both the problems stage (training and held-out problems from a dataset) and evaluation (its
benchmarks, `mixray.evaluate.benchmarks`) read datasets here. This module imports no Ray:
`mixray.problems.config` reads its field mappings from a sweep file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
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
HUB_PREFIX = "hf:"
HUB_CACHE_DIR = "datasets"  # under the run root: hub datasets read once, shared by every node


class FieldMap(Strict):
    """Which columns of a dataset hold the problem, the gold answer and (optionally) an id."""

    problem: str = Field("problem", description="Column with the problem text.")
    answer: str = Field("answer", description="Column the gold answer is taken from.")
    id: str | None = Field(None, description="Column with a unique id; omitted: the row index.")


def source_name(path: str, config: str | None, split: str) -> str:
    """How a source is named in messages: a hub dataset (with its revision, if pinned) with its
    config and split, e.g. ``hf:openai/gsm8k@e53f048 (main/test)``."""
    if not path.startswith(HUB_PREFIX):
        return path
    return f"{path} ({config}/{split})" if config else f"{path} ({split})"


def parse_hub_path(path: str) -> tuple[str, str | None]:
    """``hf:owner/name[@revision]`` -> (dataset id, revision or None); a ValueError if malformed."""
    if not path.startswith(HUB_PREFIX):
        raise ValueError(f"{path!r} is not a hub dataset (hf:owner/name[@revision])")
    dataset, at, revision = path[len(HUB_PREFIX):].partition("@")
    if not dataset or (at and not revision) or "@" in revision:
        raise ValueError(f"{path!r}: a hub dataset is hf:owner/name or hf:owner/name@revision")
    return dataset, revision or None


def read_records(path: str, config: str | None = None, split: str = "test", *,
                 cache: Path | None = None) -> list[Any]:
    """The records of ``hf:owner/name[@revision]`` (``config``, ``split``) or of a local file, in
    order. With ``cache`` (a sweep passes ``<run_root>/datasets``) a hub dataset is read through
    it (`read_hub_cached`); without, from the hub each time. Local files are never cached."""
    if path.startswith(HUB_PREFIX):
        dataset, revision = parse_hub_path(path)
        if cache is None:
            return read_hub(dataset, config, split, revision)
        return read_hub_cached(dataset, config, split, revision, cache)
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


def read_hub(dataset_id: str, config: str | None, split: str,
             revision: str | None = None) -> list[dict[str, Any]]:
    """The records of a hub dataset's split at ``revision`` (None: the default branch; needs the
    optional `datasets` package)."""
    try:
        import datasets  # optional: only clusters with hub access need it
    except ImportError:
        raise ValueError(
            f"loading hf:{dataset_id} needs the 'datasets' package (pip install "
            "'mixray[cluster]') and access to the Hugging Face hub; offline, pass a local copy "
            "instead: NAME=PATH.jsonl"
        ) from None
    # revision only when pinned: load_dataset's own default (the main branch) otherwise.
    pinned = {"revision": revision} if revision else {}
    at = f"@{revision}" if revision else ""
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split, **pinned)
    except Exception as e:  # noqa: BLE001 - network, auth, unknown split: one readable error
        raise ValueError(f"could not load hf:{dataset_id}{at} (config {config}, split {split}): "
                         f"{type(e).__name__}: {e}") from e
    return list(ds.to_list())


def hub_cache_file(dataset_id: str, config: str | None, split: str, revision: str | None,
                   cache: Path) -> Path:
    """Where `read_hub_cached` keeps a hub split: ``<cache>/<safe id>-<hash>.parquet``, the hash
    of everything that selects the records (id, config, split, revision)."""
    key = json.dumps([dataset_id, config, split, revision])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_id).strip("_.") or "dataset"
    return Path(cache) / f"{safe}-{digest}.parquet"


def read_hub_cached(dataset_id: str, config: str | None, split: str, revision: str | None,
                    cache: Path) -> list[dict[str, Any]]:
    """A hub split read through ``cache``: from its Parquet file when present, else from the hub
    and then written there (atomically, with a ``.json`` note beside it), for every later reader
    on any node that shares ``cache``. A failed hub read raises ValueError and writes nothing.

    Parquet, not jsonl: a hub dataset is an Arrow table, so its records (``to_list()``) have
    one schema that Parquet keeps exactly (ints stay ints, lists and nested dicts keep their
    types), where JSON would turn bytes, dates and big ints into something else. Records that do
    not survive the round trip (only possible for data that never was a hub table) are returned
    uncached with a warning rather than cached altered."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = hub_cache_file(dataset_id, config, split, revision, cache)
    name = f"hf:{dataset_id}" + (f"@{revision}" if revision else "")
    if file.is_file():
        try:
            records = pq.read_table(file).to_pylist()
        except (OSError, pa.ArrowException) as e:  # not ours to trust: read the hub again
            log.warning("%s: cached copy %s unreadable (%s); reading the hub again", name, file, e)
        else:
            log.info("%s (%s/%s): %d records from the run root's copy %s", name, config, split,
                     len(records), file)
            return records
    records = read_hub(dataset_id, config, split, revision)  # raises before anything is written
    try:
        table = pa.Table.from_pylist(records)
        same = table.num_rows == len(records) and table.to_pylist() == records
    except (pa.ArrowException, TypeError, ValueError) as e:
        same, why = False, str(e)
    else:
        why = "records changed on the Parquet round trip"
    if not same:
        log.warning("%s: not cached (%s); each process reads it from the hub", name, why)
        return records
    note = {"dataset": dataset_id, "config": config, "split": split, "revision": revision,
            "rows": len(records), "file": file.name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(file, lambda tmp: pq.write_table(table, tmp))
        _write_atomic(file.with_suffix(".json"),
                      lambda tmp: tmp.write_text(json.dumps(note, indent=2) + "\n"))
    except OSError as e:  # a full or read-only run root: the records are good, only uncached
        log.warning("%s: could not cache it in %s (%s); each process reads it from the hub",
                    name, cache, e)
        return records
    log.info("%s (%s/%s): %d records read from the hub, cached at %s", name, config, split,
             len(records), file)
    return records


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``: a
    reader on any node sees the whole file or none (writers racing on the same key write the
    same bytes; the last rename wins)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
