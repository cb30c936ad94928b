"""What the Ray cluster can offer, and refusing work it could never place.

Ray queues a request no node can satisfy (a GPU actor on a CPU cluster) without a word, forever.
The sweep asks before any work (its trials and every teacher replica), and each generation job
asks again before its actors start (a teacher run alone, an evaluation on a vllm engine).
"""

from __future__ import annotations

from pathlib import Path


def capacity(now: dict[str, float] | None = None) -> dict[str, float]:
    """The most the Ray cluster can offer: what it has now (`now`, else asked of Ray) or, on a
    `ray up` cluster, what its autoscaler may start (each node type's resources x max_workers,
    from the head's ~/ray_bootstrap_config.yaml), whichever is larger."""
    import ray
    import yaml

    now = dict(ray.cluster_resources()) if now is None else now
    path = Path.home() / "ray_bootstrap_config.yaml"
    if not path.is_file():
        return now
    launcher = yaml.safe_load(path.read_text()) or {}
    most: dict[str, float] = {}
    for name, node in (launcher.get("available_node_types") or {}).items():
        count = 1 if name == launcher.get("head_node_type") else node.get("max_workers", 0)
        for key, amount in (node.get("resources") or {}).items():
            most[key] = most.get(key, 0.0) + float(amount) * count
    return {k: max(now.get(k, 0.0), most.get(k, 0.0)) for k in now.keys() | most.keys()}


def require(what: str, resource: str, need: float, have: dict[str, float]) -> None:
    """ValueError naming `what` when `need` of `resource` exceeds what the cluster can offer."""
    offered = have.get(resource, 0.0)
    if need > offered:
        raise ValueError(f"{what} needs {need:g} {resource}s but the Ray cluster has "
                         f"{offered:g}" + (" (nor can its autoscaler add them)"
                                           if resource == "GPU" else ""))
