"""The capacity check: what an autoscaling cluster may add, and work no node type could hold
refused at once, naming the sweep-file key (no Ray here: capacities are given)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixray import cluster
from mixray.config import load_sweep
from mixray.sweep.plan import check_resources

REPO = Path(__file__).resolve().parents[2]


def test_launcher_maximum_sums_node_types_times_their_most_workers() -> None:
    most = cluster.launcher_maximum(REPO / "clusters" / "aws.yaml")
    launcher = yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text())
    types = launcher["available_node_types"]
    gpus = sum(t.get("resources", {}).get("GPU", 0) * t.get("max_workers", 0)
               for name, t in types.items() if name != launcher["head_node_type"])
    assert gpus > 0 and most["GPU"] == gpus
    assert most["teacher_node"] >= 1 and most["trainer_node"] >= 1
    assert cluster.launcher_maximum(REPO / "no-such-file.yaml") == {}


PAPER_RECIPES = ["paper-mix", "paper-long-short", "paper-large-small", "paper-7b-8b", "paper-lora"]


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_the_paper_recipes_fit_what_aws_yaml_may_start(name: str) -> None:
    """What `ray up clusters/aws.yaml` can add holds every trial and teacher replica, on the
    node types the recipe names."""
    cfg = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    assert cfg.resources.node_types.teachers == "teacher_node"
    assert cfg.resources.node_types.train_workers == "trainer_node"
    check_resources(cfg, cluster.launcher_maximum(REPO / "clusters" / "aws.yaml"))


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_the_paper_recipes_evaluation_and_judge_fit_one_node_of_their_type(name: str) -> None:
    """A replica is one actor, on one node: the evaluated model's and the 32B judge's
    tensor-parallel GPUs must fit one node of the type resources.node_types.evaluation names."""
    cfg = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    node_type = cfg.resources.node_types.evaluation
    assert node_type == "trainer_node"
    launcher = yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text())
    node_gpus = max(t["resources"].get("GPU", 0) for t in launcher["available_node_types"].values()
                    if node_type in t.get("resources", {}))
    assert cfg.evaluate.judge is not None
    assert 0 < cfg.evaluate.gpus <= node_gpus and 0 < cfg.evaluate.judge.gpus <= node_gpus


def test_a_node_type_no_node_carries_is_refused_naming_the_key() -> None:
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml",
                     ["resources.node_types.train_workers=trainer_node"])
    with pytest.raises(ValueError, match=r"resources\.node_types\.train_workers is "
                                         r"'trainer_node'.*\['teacher_node'\]"):
        check_resources(cfg, {"CPU": 8.0, "teacher_node": 1.0, "node:127.0.0.1": 1.0})
    check_resources(cfg, {"CPU": 8.0, "trainer_node": 2.0})


def test_node_types_reach_the_placements() -> None:
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml",
                     ["resources.node_types.teachers=teacher_node",
                      "resources.node_types.evaluation=trainer_node"])
    assert cfg.resources.placement("teachers").node_type == "teacher_node"
    assert cfg.resources.placement("evaluation").node_type == "trainer_node"
    assert load_sweep(REPO / "sweeps" / "smoke.yaml").resources.placement("teachers").node_type \
        is None


def test_a_builtin_resource_is_not_a_node_type() -> None:
    from mixray.config import SweepFileError

    with pytest.raises(SweepFileError, match="node_types.*'GPU'.*custom resource"):
        load_sweep(REPO / "sweeps" / "smoke.yaml", ["resources.node_types.teachers=GPU"])



def test_a_node_types_capacity_counts_only_its_own_nodes() -> None:
    aws = REPO / "clusters" / "aws.yaml"
    launcher = yaml.safe_load(aws.read_text())
    teacher_gpus = sum(t["resources"].get("GPU", 0) * t.get("max_workers", 0)
                       for t in launcher["available_node_types"].values()
                       if "teacher_node" in t.get("resources", {}))
    assert 0 < cluster.launcher_maximum(aws, "teacher_node")["GPU"] == teacher_gpus
    assert cluster.launcher_maximum(aws, "teacher_node")["GPU"] < \
        cluster.launcher_maximum(aws)["GPU"]
    assert cluster.launcher_maximum(aws, "no_such_node") == {}


def test_an_evaluation_or_judge_replica_no_node_can_hold_is_refused() -> None:
    have = {"CPU": 1000.0, "GPU": 4.0, "teacher_node": 1.0, "trainer_node": 1.0}
    check_resources(load_sweep(REPO / "sweeps" / "paper-mix.yaml"), have)  # TP <= 4 everywhere
    for key in ("evaluate.engine", "evaluate.judge.engine"):
        cfg = load_sweep(REPO / "sweeps" / "paper-mix.yaml", [f"{key}.tensor_parallel_size=8"])
        where = key.removesuffix(".engine")
        with pytest.raises(ValueError, match=rf"\({where}\.gpus_per_replica\) needs 8 GPUs"):
            check_resources(cfg, have)
