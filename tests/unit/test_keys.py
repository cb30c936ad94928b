"""Artifact keys: what changes an output's bytes changes its key; placement does not."""

from __future__ import annotations

from pathlib import Path

from mixray.artifacts import StageDir, spec_key
from mixray.curate.config import CurateConfig
from mixray.curate.stage import curate_stage
from mixray.generate.config import SamplingConfig, TeacherConfig
from mixray.generate.stage import teacher_stage
from mixray.problems.config import ProblemsConfig
from mixray.problems.stage import problems_stage

ROOT = Path("/nonexistent-run-root")  # constructing keys must touch no disk


def test_spec_key_ignores_dict_order() -> None:
    assert spec_key({"a": 1, "b": [1, 2]}) == spec_key({"b": [1, 2], "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})


def _teacher(**kw) -> TeacherConfig:
    return TeacherConfig(**{"model": "tiny-random", "style": "long", **kw})


def _key(teacher: TeacherConfig, problems: ProblemsConfig | None = None) -> str:
    return teacher_stage("long", teacher, problems_stage(problems or ProblemsConfig(), ROOT), ROOT).key


def test_generation_key_ignores_placement() -> None:
    base = _key(_teacher())
    assert _key(_teacher(batch_size=32, replicas=4)) == base


def test_generation_key_follows_content() -> None:
    base = _key(_teacher())
    assert _key(_teacher(style="short")) != base
    assert _key(_teacher(model="smollm2-135m-instruct")) != base
    assert _key(_teacher(sampling=SamplingConfig(max_new_tokens=17))) != base
    assert _key(_teacher(sampling=SamplingConfig(seed=1))) != base
    assert _key(_teacher(prompt="Q: {problem}")) != base
    assert _key(_teacher(), ProblemsConfig(train_size=65)) != base


def test_curate_key_follows_generation_and_policy() -> None:
    gen_a = StageDir(ROOT, "generate", {"x": 1})
    gen_b = StageDir(ROOT, "generate", {"x": 2})
    keep = CurateConfig()
    assert curate_stage(gen_a, keep, ROOT).key != curate_stage(gen_b, keep, ROOT).key
    assert curate_stage(gen_a, keep, ROOT).key != curate_stage(gen_a, CurateConfig(keep="all"), ROOT).key


def test_commit_is_atomic_and_replaces_leftovers(tmp_path: Path) -> None:
    stage = StageDir(tmp_path, "demo", {"v": 1})
    stage.path.mkdir(parents=True)  # a killed run's half-written dir
    (stage.path / "partial").write_text("x")
    assert not stage.is_committed()
    tmp = stage.staging()
    (tmp / "data.txt").write_text("done")
    stage.commit(tmp)
    assert stage.is_committed()
    assert (stage.path / "data.txt").read_text() == "done"
    assert not (stage.path / "partial").exists()
    assert (stage.path / "spec.json").exists()
    assert not tmp.exists()
