"""What the Ray cluster can offer, and refusing work it could never place.

Ray queues a request no node can satisfy (a GPU actor on a CPU cluster, an actor asking for a
node type's custom resource that no node type carries) without a word, forever. The sweep asks
before any work (its trials and every teacher replica), and each generation job asks again
before its actors start (a teacher run alone, an evaluation on a vllm engine).

What an autoscaling cluster can offer is more than what its nodes have now: its worker types may
start from 0 nodes. That is asked of Ray (`autoscaler_maximum`), not of a file one launcher writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# A node type's custom resource marks where work may go; each actor or worker asks for this much
# of it, so that CPUs and GPUs, not the marker, decide how many fit on a node (a node carries 1).
NODE_TYPE_SHARE = 0.001
BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")
# A node type's resource giving the memory of each of its GPUs in GiB (clusters/*.yaml), which
# the memory preview reads (mixray.cost.fit); nothing requests it.
GPU_MEMORY = "gpu_memory_gib"


def capacity(now: dict[str, float] | None = None,
             node_type: str | None = None) -> dict[str, float]:
    """The most the Ray cluster can offer, per resource: what it has now (`now`, else asked of
    Ray) or what its autoscaler may start (`autoscaler_maximum`), whichever is larger. With
    `node_type` (the custom resource marking one, resources.node_types), only what nodes of
    that type have or may be added (`now` is then ignored)."""
    import ray

    if node_type is not None:
        now = {}
        for node in ray.nodes():
            if node.get("Alive") and node_type in node.get("Resources", {}):
                for key, amount in node["Resources"].items():
                    now[key] = now.get(key, 0.0) + float(amount)
    elif now is None:
        now = dict(ray.cluster_resources())
    most = autoscaler_maximum(node_type)
    return {k: max(now.get(k, 0.0), most.get(k, 0.0)) for k in now.keys() | most.keys()}


def autoscaler_maximum(node_type: str | None = None) -> dict[str, float]:
    """Each resource summed over the node types the autoscaler may start (resources x most
    nodes; unbounded types count as sys.maxsize), only those carrying `node_type` if given.
    Asked of Ray's GCS first: the cluster config an autoscaler reports there (Ray's autoscaler
    v2, KubeRay, and `make cluster-up` for clusters/local.yaml) — the record Ray Data sizes its
    own autoscaling by. A `ray up` cluster's v1 autoscaler reports none: then the launcher's
    config on the head, ~/ray_bootstrap_config.yaml. Neither: {} (a fixed cluster)."""
    return _summed(autoscaler_groups(), node_type)


def autoscaler_groups() -> list[tuple[dict[str, float], int]]:
    """(resources of one node, most nodes) per node type the autoscaler may start
    (`autoscaler_maximum` says where from); [] for a fixed cluster."""
    from ray._private import state  # Ray's own reader of the reported config (Ray Data's too)

    reported = state.state.get_cluster_config()
    if reported is not None and reported.node_group_configs:
        return [(dict(g.resources), sys.maxsize if g.max_count == -1 else g.max_count)
                for g in reported.node_group_configs]
    return file_groups(Path.home() / "ray_bootstrap_config.yaml")


def running_groups() -> list[tuple[dict[str, float], int]]:
    """The running cluster's node types: what its autoscaler may start and every alive node."""
    import ray

    alive = [(dict(n["Resources"]), 1) for n in ray.nodes() if n.get("Alive")]
    return autoscaler_groups() + alive


def launcher_maximum(path: Path, node_type: str | None = None) -> dict[str, float]:
    """`autoscaler_maximum` from a cluster file (`file_groups`); {} when there is none."""
    return _summed(file_groups(path), node_type)


def file_groups(path: Path) -> list[tuple[dict[str, float], int]]:
    """The node types of a cluster file: a cluster launcher YAML (`ray up`'s, or its bootstrap
    config on the head) or a KubeRay manifest (RayCluster, RayJob or RayService); [] when there
    is no such file."""
    import yaml

    if not path.is_file():
        return []
    for doc in yaml.safe_load_all(path.read_text()):
        if groups := node_groups(doc or {}):
            return groups
    return []


def gpu_memory(groups: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Node type (its custom resource) -> GiB of each of its GPUs, for the node types whose
    resources say it (`GPU_MEMORY`; the smallest where several groups carry one type)."""
    out: dict[str, float] = {}
    for resources, _ in groups:
        if GPU_MEMORY in resources:
            for mark in markers(resources):
                out[mark] = min(out.get(mark, float("inf")), float(resources[GPU_MEMORY]))
    return out


def markers(resources: dict[str, float]) -> list[str]:
    """The custom resources among ``resources`` that mark a node type."""
    return sorted(k for k in resources if k not in (*BUILTIN, GPU_MEMORY)
                  and not k.startswith(("node:", "accelerator_type:")))


def node_groups(doc: dict[str, Any]) -> list[tuple[dict[str, float], int]]:
    """(resources of one node, most nodes) per node type of one YAML document: a launcher's
    `available_node_types`, or a KubeRay cluster spec's head and worker groups ([] for any other
    document)."""
    if "available_node_types" in doc:
        return [(node.get("resources") or {},
                 1 if name == doc.get("head_node_type") else node.get("max_workers", 0))
                for name, node in doc["available_node_types"].items()]
    spec = doc.get("spec") or {}
    spec = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec  # RayJob, Service
    if "headGroupSpec" not in spec:
        return []
    return [(_pod_resources(spec["headGroupSpec"]), 1)] + [
        (_pod_resources(g), int(g.get("maxReplicas", g.get("replicas", 0))))
        for g in spec.get("workerGroupSpecs") or []]


def _pod_resources(group: dict[str, Any]) -> dict[str, float]:
    """What KubeRay makes one pod of a group offer Ray: rayStartParams first (num-cpus,
    num-gpus, resources), else the Ray container's limits (KubeRay's own rule; the Ray container
    is the first)."""
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    out: dict[str, float] = {}
    if (cpu := params.get("num-cpus", limits.get("cpu"))) is not None:
        cpu = str(cpu)
        out["CPU"] = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    if (gpus := params.get("num-gpus", limits.get("nvidia.com/gpu"))) is not None:
        out["GPU"] = float(gpus)
    if custom := params.get("resources"):  # '"{\"teacher_node\": 1}"': JSON, quoted for the CLI
        out |= json.loads(str(custom).strip().strip('"').replace('\\"', '"'))
    return out


def _summed(groups: list[tuple[dict[str, float], int]],
            node_type: str | None) -> dict[str, float]:
    most: dict[str, float] = {}
    for resources, count in groups:
        if node_type is None or node_type in resources:
            for key, amount in resources.items():
                most[key] = most.get(key, 0.0) + float(amount) * count
    return most


def require(what: str, resource: str, need: float, have: dict[str, float],
            where: str = "the Ray cluster") -> None:
    """ValueError naming `what` when `need` of `resource` exceeds what the cluster (``where``:
    how the message names it) can offer."""
    offered = have.get(resource, 0.0)
    if need > offered:
        raise ValueError(f"{what} needs {need:g} {resource}s but {where} has "
                         f"{offered:g}" + (" (nor can its autoscaler add them)"
                                           if resource == "GPU" else ""))


def require_node_type(what: str, resource: str, have: dict[str, float],
                      where: str = "the Ray cluster") -> None:
    """ValueError naming `what` (a sweep-file key) when no node, present or to come, carries
    the custom resource `resource` that marks a node type."""
    if have.get(resource, 0.0) < NODE_TYPE_SHARE:
        marks = markers(have)
        raise ValueError(f"{what} is {resource!r}, but no node type of {where} carries "
                         f"that resource (nor can its autoscaler add one); it has "
                         f"{marks or 'no custom resources'}")

