"""One local Ray cluster (2 CPUs, as on the CI machine) for the whole integration session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from mixray.sweep import worker_env

    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=2, runtime_env={"env_vars": worker_env()}, include_dashboard=False)
    yield ray
    ray.shutdown()
