"""Failed generation rows are counted, bounded and retried, never kept as finished work: a
resumed run regenerates them, and a share of them over the job's bound fails the stage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixray.generate.config import SamplingConfig, TeacherConfig
from mixray.generate.job import GenerationJob
from mixray.generate.stage import (
    GenerationFailed,
    check_errors,
    done_rows,
    expand_samples,
    pending_rows,
    retire_failed,
)


def _part(path: Path, rows: list[tuple[str, int, str | None]]) -> None:
    pq.write_table(pa.table({
        "problem_id": [r[0] for r in rows],
        "sample_idx": pa.array([r[1] for r in rows], pa.int32()),
        "completion": ["" if r[2] else "ok" for r in rows],
        "finish_reason": ["error" if r[2] else "stop" for r in rows],
        "error": pa.array([r[2] for r in rows], pa.string())}), path)


def _job(max_error_rate: float) -> GenerationJob:
    return GenerationJob(label="api", model_path=None, prompt="{problem}", system=None,
                         sampling=SamplingConfig(), max_error_rate=max_error_rate)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Two parts of a killed or failed run: 6 rows, 3 of them failed (HTTP 401 twice, 429)."""
    _part(tmp_path / "part-a-00000.parquet",
          [("p0", 0, None), ("p1", 0, "HTTP 401: bad key"), ("p2", 0, None)])
    _part(tmp_path / "part-a-00001.parquet",
          [("p3", 0, "HTTP 401: bad key"), ("p4", 0, "HTTP 429: slow down"), ("p5", 0, None)])
    return tmp_path


def test_failed_rows_are_not_done_and_are_retired_before_a_rerun(out: Path) -> None:
    assert done_rows(out) == {("p0", 0), ("p2", 0), ("p5", 0)}
    assert retire_failed(out) == 3
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.num_rows == 3 and table["error"].null_count == 3
    assert retire_failed(out) == 0 and not list(out.glob(".*tmp"))  # nothing left behind
    problems = pa.table({"problem_id": [f"p{i}" for i in range(6)],
                         "problem": ["q"] * 6, "answer": ["1"] * 6})
    todo = pending_rows(expand_samples(problems, 1), done_rows(out))
    assert sorted(todo["problem_id"].to_pylist()) == ["p1", "p3", "p4"]  # only what failed


def test_a_part_of_failures_only_disappears(tmp_path: Path) -> None:
    _part(tmp_path / "part-b-00000.parquet", [("p0", 0, "OOM"), ("p0", 1, "OOM")])
    assert retire_failed(tmp_path) == 2 and not list(tmp_path.iterdir())


def test_over_the_bound_fails_naming_the_job_count_share_and_errors(out: Path) -> None:
    with pytest.raises(GenerationFailed) as failed:
        check_errors(_job(0.25), out)
    message = str(failed.value)
    assert "generate[api]" in message and "3 of 6 rows failed (50.0%" in message
    assert "HTTP 401: bad key" in message and "HTTP 429: slow down" in message
    assert "2 distinct error(s)" in message and str(out) in message


@pytest.mark.parametrize("bound", [0.5, 1.0])
def test_within_the_bound_the_failures_are_counted(out: Path, bound: float) -> None:
    assert check_errors(_job(bound), out) == (3, 6)


def test_zero_allows_no_failure(tmp_path: Path) -> None:
    _part(tmp_path / "part-c-00000.parquet", [("p0", 0, None)] * 1 + [("p1", 0, "timeout")])
    with pytest.raises(GenerationFailed):
        check_errors(_job(0.0), tmp_path)
    _part(tmp_path / "part-c-00000.parquet", [("p0", 0, None)])
    assert check_errors(_job(0.0), tmp_path) == (0, 1)


def test_the_bound_is_documented_validated_and_outside_the_cache_key() -> None:
    from mixray.generate.stage import generation_spec

    field = TeacherConfig.model_fields["max_error_rate"]
    assert field.default == 0.01 and "exit 1" in field.description
    with pytest.raises(ValueError):
        TeacherConfig(model="tiny-random", style="short", max_error_rate=1.5)
    a = TeacherConfig(model="tiny-random", style="short")
    b = TeacherConfig(model="tiny-random", style="short", max_error_rate=0.0)
    assert generation_spec("t", a, "k") == generation_spec("t", b, "k")


def test_raising_a_bound_keeps_an_interrupted_sweep_resumable() -> None:
    from mixray.config import load_sweep

    repo = Path(__file__).resolve().parents[2]
    base = load_sweep(repo / "sweeps" / "smoke.yaml", [])
    raised = load_sweep(repo / "sweeps" / "smoke.yaml", ["teachers.long.max_error_rate=0.5",
                                                         "evaluate.max_error_rate=0.2"])
    other = load_sweep(repo / "sweeps" / "smoke.yaml", ["teachers.long.sampling.seed=1"])
    assert base.resume_key() == raised.resume_key() != other.resume_key()
