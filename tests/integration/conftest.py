"""Session-wide fixtures of the integration tests: one local Ray cluster (2 CPUs, as on the CI
machine), and one finished smoke sweep that several test files read (it takes minutes to run)."""

from __future__ import annotations

import json
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
    """sweeps/smoke.yaml run twice into one fresh run root: (config, first summary, second
    summary).

    The second run, named smoke-failing, has one share and two students, the second of which
    cannot load: it must find every generation and curation stage cached (test_smoke_sweep.py),
    and fail that student's trial while finishing the other (test_sweep_failures.py). Folding
    both into one run saves CI a trial's start-up (about 2 minutes on 2 cores). The other
    tests read the first run's MLflow records and artifacts.
    """
    from mixray.config import load_sweep
    from mixray.sweep import run_sweep

    root = tmp_path_factory.mktemp("runs")
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [f"run_root={root}"])
    first = run_sweep(cfg)
    broken = tmp_path_factory.mktemp("broken") / "broken-student"  # its weights are missing
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    second = run_sweep(load_sweep(REPO / "sweeps" / "smoke.yaml", [
        f"run_root={root}", "name=smoke-failing", f"students=[tiny-random, {broken}]",
        "search.long_share=[0.5]"]))
    return cfg, first, second
