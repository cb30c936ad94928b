"""Teacher generation resumes row by row: a killed run's finished parts are kept, only the
missing rows are generated, nothing is duplicated or lost, and the output is then cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from mixray import models
from mixray.config import load_sweep
from mixray.generate.stage import generate_teacher, teacher_stage
from mixray.problems import build_problems

REPO = Path(__file__).resolve().parents[2]


def test_resume_generates_only_missing_rows(ray_cluster, tmp_path: Path) -> None:
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml")
    teacher = cfg.teachers["short"].model_copy(update={"batch_size": 8})
    model = models.resolve(teacher.model)
    n = cfg.problems.train_size

    full_root, killed_root = tmp_path / "full", tmp_path / "killed"
    problems, _ = build_problems(cfg.problems, full_root)
    full, full_stats = generate_teacher("short", teacher, model, problems, full_root)
    assert full_stats["rows"] == n and full_stats["resumed_rows"] == 0

    # What a run killed after its first batch leaves: one finished part and one half-written.
    problems_k, _ = build_problems(cfg.problems, killed_root)
    stage = teacher_stage("short", teacher, problems_k, killed_root)
    assert stage.key == full.key  # keys never depend on where the run root is
    first = sorted((full.path / "data").glob("part-*.parquet"))[0]
    done = pq.read_table(first).num_rows
    assert 0 < done < n
    work = stage.partial() / "data"
    work.mkdir(parents=True)
    shutil.copy(first, work / first.name)
    (work / ".part-dead0000-00001.tmp").write_bytes(b"half a parquet file")

    resumed, stats = generate_teacher("short", teacher, model, problems_k, killed_root)
    assert stats["resumed_rows"] == done
    assert stats["rows"] == n - done < full_stats["rows"]  # the rerun generated fewer rows
    table = pq.read_table(resumed.path / "data")
    ids = table["problem_id"].to_pylist()
    assert len(ids) == n and len(set(ids)) == n  # none lost, none duplicated
    assert set(ids) == set(pq.read_table(problems.path / "train.parquet")["problem_id"].to_pylist())
    assert table["error"].null_count == n  # no engine errors

    again, again_stats = generate_teacher("short", teacher, model, problems_k, killed_root)
    assert again_stats is None and again.path == resumed.path  # committed: reused, not redone
