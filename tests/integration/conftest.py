"""Session-wide fixtures of the integration tests: one local Ray cluster (2 CPUs, as on the CI
machine), and one finished smoke sweep that several test files read (it takes minutes to run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from mixray.sweep import worker_env

    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=2, runtime_env={"env_vars": worker_env()}, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_sweep(ray_cluster, tmp_path_factory) -> tuple[Any, dict, dict]:
    """sweeps/smoke.yaml run twice into one fresh run root (the second time with one of its two
    trials): (config, first summary, second summary).

    The second run must find every generation and curation stage cached (test_smoke_sweep.py);
    the other tests read the first run's MLflow records and artifacts.
    """
    from mixray.config import load_sweep
    from mixray.sweep import run_sweep

    root = tmp_path_factory.mktemp("runs")
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [f"run_root={root}"])
    first = run_sweep(cfg)
    # The second run only has to show that nothing upstream runs again: one trial is enough.
    second = run_sweep(load_sweep(REPO / "sweeps" / "smoke.yaml",
                                  [f"run_root={root}", "search.long_share=[0.5]"]))
    return cfg, first, second
