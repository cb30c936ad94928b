"""Artifact keys: what changes an output's bytes changes its key; placement does not."""

from __future__ import annotations

from pathlib import Path

from mixray.artifacts import StageDir, spec_key
from mixray.curate.config import CurateConfig
from mixray.curate.stage import curate_stage
from mixray.evaluate.config import EvaluateConfig
from mixray.evaluate.stage import evaluation_spec
from mixray.generate.config import SamplingConfig, TeacherConfig
from mixray.generate.job import Placement, model_job
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


def test_two_makers_of_one_output_take_turns_and_the_second_reuses_it(tmp_path: Path) -> None:
    """Two processes (here threads, each with its own lock file handle, as two trials have)
    making the same keyed output: the second waits for the first's commit and reuses it, where
    without the lock both wrote parts into one partial dir (a rehearsal trial lost its part)."""
    import threading
    import time

    made: list[str] = []

    def make(name: str) -> None:
        stage = StageDir(tmp_path, "demo", {"v": 1})
        with stage.locked():
            if stage.is_committed():
                return
            work = stage.partial()
            (work / f"part-{name}").write_text(name)
            time.sleep(0.3)  # the other maker arrives meanwhile
            assert {p.name for p in work.iterdir()} == {f"part-{name}"}
            stage.commit(work)
            made.append(name)

    threads = [threading.Thread(target=make, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1
    stage = StageDir(tmp_path, "demo", {"v": 1})
    assert [p.name for p in stage.path.glob("part-*")] == [f"part-{made[0]}"]


def _eval_key(model: Path, cfg: EvaluateConfig | None = None, system: str | None = None,
              problem: str = "1 + 1?", label: str = "eval") -> str:
    rows = [{"problem_id": "b/0", "problem": problem, "answer": "2"}]
    return spec_key(evaluation_spec(label, cfg or EvaluateConfig(), model, system, rows))


def _weights(folder: Path, data: bytes) -> Path:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(data)
    return folder


def test_evaluation_key_follows_content(tmp_path: Path) -> None:
    model = _weights(tmp_path / "a", b"w")
    base = _eval_key(model)
    assert _eval_key(_weights(tmp_path / "b", b"other weights")) != base
    assert _eval_key(model, EvaluateConfig(sampling={"max_new_tokens": 17})) != base
    assert _eval_key(model, EvaluateConfig(sampling={"n": 2, "temperature": 0.5})) != base
    assert _eval_key(model, EvaluateConfig(sampling={"seed": 1})) != base
    assert _eval_key(model, EvaluateConfig(engine={"kind": "hf", "dtype": "bfloat16"})) != base
    assert _eval_key(model, EvaluateConfig(engine={"kind": "vllm"})) != base
    assert _eval_key(model, system="You are terse.") != base
    assert _eval_key(model, problem="2 + 2?") != base
    assert _eval_key(model, label="judge") != base  # the label is in every row
    served = EvaluateConfig(engine={"kind": "http", "base_url": "http://h/v1", "model": "a"})
    other = EvaluateConfig(engine={"kind": "http", "base_url": "http://h/v1", "model": "b"})
    assert _eval_key(None, served) != _eval_key(None, other)


def test_evaluation_key_ignores_placement(tmp_path: Path) -> None:
    model = _weights(tmp_path / "a", b"w")
    base = _eval_key(model)
    placed = EvaluateConfig(batch_size=32, replicas=4, gpus_per_replica=1, max_error_rate=0.5,
                            samples_to_log=0, engine={"kind": "hf"})
    assert _eval_key(model, placed) == base
    vllm = EvaluateConfig(engine={"kind": "vllm", "tensor_parallel_size": 2,
                                  "gpu_memory_utilization": 0.5, "enforce_eager": True})
    assert _eval_key(model, vllm) == _eval_key(model, EvaluateConfig(engine={"kind": "vllm"}))
    served = {"kind": "http", "base_url": "http://h/v1", "model": "a"}
    assert _eval_key(None, EvaluateConfig(engine=served)) == _eval_key(
        None, EvaluateConfig(engine=served | {"base_url": "http://other/v1", "max_retries": 9}))
    # Placement (CPUs, threads) is no input of the key at all: the job carries it.
    jobs = [model_job(EvaluateConfig(), "eval", model, "{problem}", None, p)
            for p in (Placement(), Placement(cpus_per_engine=4, torch_threads=4))]
    assert jobs[0].placement != jobs[1].placement and jobs[0].sampling == jobs[1].sampling
