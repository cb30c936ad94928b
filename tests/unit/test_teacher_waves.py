"""Which teachers generate at once: all whose replicas the cluster holds together, in the sweep
file's order, never a partial pool (no Ray: capacities are given); and which engines a sweep
asks vLLM about before any generation."""

from __future__ import annotations

from pathlib import Path

from mixray.artifacts import StageDir
from mixray.config import load_sweep
from mixray.generate.stage import teacher_stage
from mixray.sweep.upstream import teacher_waves, vllm_sites

REPO = Path(__file__).resolve().parents[2]


def test_teachers_that_fit_together_generate_at_once() -> None:
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml")   # two teachers, one 0.5-CPU replica each
    assert teacher_waves(cfg, {"CPU": 2.0}) == [["long", "short"]]
    assert teacher_waves(cfg, {"CPU": 0.5}) == [["long"], ["short"]]
    # too big to fit at all: a wave of its own (the capacity check refuses it before any work)
    assert teacher_waves(cfg, {}) == [["long"], ["short"]]
    one = load_sweep(REPO / "sweeps" / "smoke.yaml", ["resources.teachers_at_once=one"])
    assert teacher_waves(one, {"CPU": 64.0}) == [["long"], ["short"]]


def test_gpu_teachers_are_grouped_by_the_gpus_their_node_type_may_hold() -> None:
    cfg = load_sweep(REPO / "sweeps" / "paper-mix.yaml")   # TP 2 x 4, 2 x 4, 4 x 2, 1 x 8
    cpus = 1000.0
    assert teacher_waves(cfg, {"CPU": cpus, "GPU": 32.0}) == [["long", "short", "large",
                                                             "small"]]
    assert teacher_waves(cfg, {"CPU": cpus, "GPU": 16.0}) == [["long", "short"],
                                                             ["large", "small"]]
    assert teacher_waves(cfg, {"CPU": cpus, "GPU": 8.0}) == [["long"], ["short"], ["large"],
                                                            ["small"]]


def test_every_vllm_engine_is_checked_before_generation_except_teachers_already_done(
        tmp_path: Path) -> None:
    """Issue 26: a trainer node type without vLLM is refused before the teachers' hours, not
    when the first trial evaluates; a teacher whose generation is committed runs no engine, so
    its node type is not booted just to be asked."""
    cfg = load_sweep(REPO / "sweeps" / "paper-mix.yaml", [f"run_root={tmp_path}"])
    problems = StageDir(tmp_path, "problems", {"seed": 0})
    sites = vllm_sites(cfg, problems)
    assert [(s.label, s.node_type, s.gpus) for s in sites] == [
        ("teacher 'long'", "teacher_node", 2.0), ("teacher 'short'", "teacher_node", 2.0),
        ("teacher 'large'", "teacher_node", 4.0), ("teacher 'small'", "teacher_node", 1.0),
        ("the evaluation", "trainer_node", 1.0), ("the judge", "trainer_node", 2.0)]
    done = teacher_stage("long", cfg.teachers["long"], problems, tmp_path)
    done.commit(done.partial())
    assert "teacher 'long'" not in [s.label for s in vllm_sites(cfg, problems)]
    hf = load_sweep(REPO / "sweeps" / "smoke.yaml", [f"run_root={tmp_path}"])
    assert vllm_sites(hf, problems) == []  # hf engines: nothing to ask
