"""Which teachers generate at once: all whose replicas the cluster holds together, in the sweep
file's order, never a partial pool (no Ray: capacities are given)."""

from __future__ import annotations

from pathlib import Path

from mixray.config import load_sweep
from mixray.sweep.upstream import teacher_waves

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
