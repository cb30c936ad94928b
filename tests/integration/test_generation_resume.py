"""Teacher generation resumes row by row: a killed run's finished parts are kept, only the
missing rows are generated, nothing is duplicated or lost, and the output is then cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from mixray import models
from mixray.config import load_sweep
from mixray.generate.config import SamplingConfig
from mixray.generate.stage import generate_teacher, teacher_stage
from mixray.problems.stage import build_problems

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


def test_resume_with_n_samples_generates_only_missing_rows(ray_cluster, tmp_path: Path) -> None:
    """n samples per problem: rows are (problem, sample) pairs, and a resumed run generates
    only the pairs a killed run left out, however its parts split a problem's samples."""
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", ["problems.train_size=6"])
    teacher = cfg.teachers["short"].model_copy(update={
        "batch_size": 4, "sampling": SamplingConfig(max_new_tokens=8, temperature=0.8, n=3)})
    model = models.resolve(teacher.model)
    full_root, killed_root = tmp_path / "full", tmp_path / "killed"
    problems, _ = build_problems(cfg.problems, full_root)
    full, full_stats = generate_teacher("short", teacher, model, problems, full_root)
    assert full_stats["rows"] == 18 and full_stats["samples_per_problem"] == 3

    problems_k, _ = build_problems(cfg.problems, killed_root)
    stage = teacher_stage("short", teacher, problems_k, killed_root)
    # two parts of 4 rows: the second ends mid-way through a problem's samples
    parts = sorted((full.path / "data").glob("part-*.parquet"))[:2]
    work = stage.partial() / "data"
    work.mkdir(parents=True)
    for part in parts:
        shutil.copy(part, work / part.name)
    kept = pq.read_table(parts)
    assert kept.num_rows == 8

    resumed, stats = generate_teacher("short", teacher, model, problems_k, killed_root)
    assert stats["resumed_rows"] == 8 and stats["rows"] == 10
    table = pq.read_table(resumed.path / "data")
    pairs = list(zip(table["problem_id"].to_pylist(), table["sample_idx"].to_pylist(),
                     strict=True))
    ids = pq.read_table(problems.path / "train.parquet")["problem_id"].to_pylist()
    assert len(pairs) == 18 and set(pairs) == {(p, s) for p in ids for s in range(3)}


KILLABLE = """
import sys
import ray
from mixray import models, runtime
from mixray.config import load_sweep
from mixray.generate.stage import generate_teacher
from mixray.problems.stage import build_problems

address, sweep, root = sys.argv[1:4]
runtime.connect(address)
cfg = load_sweep(sweep, [f"run_root={root}", "problems.train_size=96"])
teacher = cfg.teachers["long"].model_copy(update={"batch_size": 4})
problems, _ = build_problems(cfg.problems, cfg.run_root_path)
generate_teacher("long", teacher, models.resolve(teacher.model), problems, cfg.run_root_path)
"""


def test_hard_kill_mid_generation_then_resume(ray_cluster, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    address = ray_cluster.get_runtime_context().gcs_address
    sweep = str(REPO / "sweeps" / "smoke.yaml")
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, address, sweep, str(tmp_path)])
    cfg = load_sweep(sweep, [f"run_root={tmp_path}", "problems.train_size=96"])
    teacher = cfg.teachers["long"].model_copy(update={"batch_size": 4})
    problems, _ = build_problems(cfg.problems, tmp_path)
    stage = teacher_stage("long", teacher, problems, tmp_path)
    work = stage.path.parent / f".partial-{stage.key}" / "data"
    deadline = time.monotonic() + 300
    while not list(work.glob("part-*.parquet")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no part written in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # hard: no cleanup, no commit
    proc.wait()
    assert not stage.is_committed(), "the run finished before it could be killed"

    before = pq.read_table(sorted(work.glob("part-*.parquet"))).num_rows
    _, stats = generate_teacher("long", teacher, models.resolve(teacher.model), problems, tmp_path)
    table = pq.read_table(stage.path / "data")
    ids = table["problem_id"].to_pylist()
    assert len(ids) == 96 and len(set(ids)) == 96
    assert stats["resumed_rows"] >= before > 0
    assert stats["rows"] == 96 - stats["resumed_rows"] < 96
