"""The one place mixray starts or joins Ray: the sweep and evaluate CLIs, the benchmarks and the
integration tests' session cluster all call `connect`, so every driver gives its workers the
same environment (the model cache, quiet tokenizers).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mixray import models


def worker_env() -> dict[str, str]:
    """Environment every Ray worker gets: the driver's model cache, and quiet tokenizers."""
    return {
        "MIXRAY_CACHE": str(models.cache_dir()),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def connect(address: str | None = None, *, num_cpus: int | None = None,
            include_dashboard: bool | None = None) -> None:
    """Join the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, as `ray job submit` sets it,
    else a new local one; 'local': always a new one), or start one with ``num_cpus``.

    The driver's own environment gets `worker_env` too (only where unset): a local cluster's
    workers inherit it from the processes this starts, and the driver itself builds models."""
    import ray

    env = worker_env()
    for key, value in env.items():
        os.environ.setdefault(key, value)
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=include_dashboard,
             runtime_env={"env_vars": env}, log_to_driver=True)


@contextmanager
def connected(address: str | None = None, *, num_cpus: int | None = None,
              include_dashboard: bool | None = None) -> Iterator[None]:
    """`connect`, then ``ray.shutdown()`` however the block ends."""
    import ray

    connect(address, num_cpus=num_cpus, include_dashboard=include_dashboard)
    try:
        yield
    finally:
        ray.shutdown()
