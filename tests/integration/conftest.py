"""Session-wide fixtures of the integration tests: one local Ray cluster (2 CPUs, as on the CI
machine), and one finished smoke sweep that several test files read (it takes minutes to run).
A test that hangs prints every stack and stops the run (see `pytest_runtest_protocol`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# The slowest test here takes about 7.5 minutes with its fixtures on a fresh 2-core machine (the
# smoke sweep, building its models). Past this, a test is taken to hang.
HANG_S = float(os.environ.get("MIXRAY_TEST_HANG_S", 1500))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A hang would otherwise eat CI's whole budget and leave no trace: past HANG_S (setup
    included), print this process's stacks and every Ray worker's (`ray stack`), then exit."""
    timer = threading.Timer(HANG_S, _report_hang, args=(item.config, item.nodeid))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _report_hang(config: pytest.Config, nodeid: str) -> None:
    config.pluginmanager.get_plugin("capturemanager").suspend_global_capture(in_=True)
    write = config.pluginmanager.get_plugin("terminalreporter").write_line
    venv_bin = str(Path(sys.executable).parent)  # `ray stack` runs the venv's py-spy
    ray_stacks = subprocess.run(["ray", "stack"], capture_output=True, text=True, timeout=300,
                                env=os.environ | {"PATH": f"{venv_bin}:{os.environ['PATH']}"})
    write(f"\n{'=' * 30} ray stack (every Ray worker on this machine) {'=' * 30}")
    write(ray_stacks.stdout + ray_stacks.stderr)
    write(f"{'=' * 30} this process's threads {'=' * 30}")
    for thread_id, frame in sys._current_frames().items():
        write(f"--- thread {thread_id}\n" + "".join(traceback.format_stack(frame)))
    write(f"HANG: {nodeid} ran past {HANG_S:.0f} s (setup included); stacks above. Stopping.")
    sys.stdout.flush()
    os._exit(3)


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
