"""Session-wide fixtures of the integration tests: one local Ray cluster (2 CPUs, as on the CI
machine), and one finished smoke sweep that every test which only reads a sweep's results reads
(MLflow lineage, artifacts, the report, the browser, cost actuals, Prometheus' series: it takes
minutes to run), watched by a Prometheus started before it. Tests that must break, interrupt or
resume a sweep run their own. A test that hangs prints every stack and stops the run (see
`pytest_runtest_protocol`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql
import pytest

REPO = Path(__file__).resolve().parents[2]
# The slowest test here takes about 7.5 minutes with its fixtures on a fresh 2-core machine (the
# smoke sweep, building its models). Past this, a test is taken to hang.
HANG_S = float(os.environ.get("MIXRAY_TEST_HANG_S", 1500))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A hang would otherwise eat CI's whole budget and leave no trace: past HANG_S (setup
    included), print the stacks of pytest and of every Ray worker (py-spy), then exit."""
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
    write(f"\n{'=' * 30} every Ray worker on this machine {'=' * 30}")
    for pid, name in _ray_workers():
        write(f"--- {pid} {name}\n{_py_spy_dump(pid)}")
    write(f"{'=' * 30} this process (pytest) {'=' * 30}")
    main = sys._current_frames()[threading.main_thread().ident]
    write("".join(traceback.format_stack(main)[-12:]))  # ours and Ray's frames, not pytest's
    write(f"HANG: {nodeid} ran past {HANG_S:.0f} s (setup included); stacks above. Stopping.")
    sys.stdout.flush()
    os._exit(3)


def _ray_workers() -> list[tuple[int, str]]:
    """(pid, name) of the Ray worker processes, leaving out the idle ones and Ray's agents."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    quiet = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
    return [(int(pid), args) for pid, _, args in (line.strip().partition(" ")
                                                  for line in ps.splitlines())
            if args.startswith("ray::") and not args.startswith(quiet)]


def _py_spy_dump(pid: int) -> str:
    """The process's main and training threads, innermost 16 frames each (the rest is Ray's)."""
    # `ray stack` would run py-spy through sudo, which CI does not have; we own the workers
    py_spy = Path(sys.executable).parent / "py-spy"
    try:
        out = subprocess.run([str(py_spy), "dump", "--pid", str(pid)], capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "(py-spy timed out)"
    blocks = re.split(r"\n(?=Thread )", out.stdout)
    keep = [b.splitlines()[:17] for b in blocks[1:]
            if '"MainThread"' in b.splitlines()[0] or '"TrainingThread' in b.splitlines()[0]]
    return "\n".join(line for block in keep for line in block) or out.stdout + out.stderr


@pytest.fixture(scope="session")
def free_ports() -> Callable[[int], list[int]]:
    """``free_ports(n)``: n distinct free ports on 127.0.0.1 for servers a test starts, chosen
    as the rehearsal cluster chooses its own (clusters/local_provider.free_ports): below the
    ephemeral range, so that a port from bind(0), released for the server, cannot be handed to
    another process's bind(0) first."""
    sys.path.insert(0, str(REPO / "clusters"))  # as test_cluster imports it: one module, not two
    from local_provider import free_ports

    return free_ports


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from mixray import runtime

    with runtime.connected(num_cpus=2, include_dashboard=False):
        yield ray


@dataclass
class SmokeWatch:
    """Prometheus watching the shared smoke sweep: its URL (None: no prometheus binary, the
    metrics test skips), and the Unix times the sweep's first run started and ended."""

    url: str | None
    started: float = 0.0
    ended: float = 0.0
    before: dict[tuple[str, str], float] = field(default_factory=dict)  # teacher counters


@pytest.fixture(scope="session")
def smoke_watch(ray_cluster, tmp_path_factory, free_ports) -> Iterator[SmokeWatch]:
    """Prometheus on 127.0.0.1 scraping every node of the session's cluster each second, from
    before the smoke sweep to the session's end. The session cluster runs without Ray's
    dashboard, whose reporter writes the service discovery file, so one of the same form is
    written from `ray.nodes()`."""
    if promql.PROMETHEUS is None:
        yield SmokeWatch(None)
        return
    tool, run_dir = promql.tool(), tmp_path_factory.mktemp("prometheus")
    targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}"
               for n in ray_cluster.nodes() if n["Alive"]]
    sd_file = run_dir / "sd.json"
    sd_file.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    [port] = free_ports(1)
    tool.start(run_dir, sd_file, port, interval_s=1, binary=promql.PROMETHEUS)
    url = f"http://127.0.0.1:{port}"
    try:
        # scraped once at least before the sweep starts
        promql.settle(lambda: promql.values(url, 'up{job="ray"}', ()), {(): 1.0})
        yield SmokeWatch(url)
    finally:
        tool.stop(run_dir)


@pytest.fixture(scope="session")
def smoke_sweep(ray_cluster, smoke_watch, tmp_path_factory) -> tuple[Any, dict, dict]:
    """sweeps/smoke.yaml run twice into one fresh run root: (config, first summary, second
    summary).

    The first run holds 4 problems out of its mixes (``mix.validation_problems``), so its trials
    measure val_loss as the dashboard plots it, and Prometheus (`smoke_watch`) scrapes it.
    The second run, named smoke-failing, has one share and two students, the second of which
    cannot load: it must find every generation and curation stage cached (test_smoke_sweep.py),
    and fail that student's trial while finishing the other (test_sweep_failures.py). Folding
    both into one run saves CI a trial's start-up (about 2 minutes on 2 cores). The other
    tests read the first run's MLflow records and artifacts.
    """
    from mixray.config import load_sweep
    from mixray.sweep.run import run_sweep

    root = tmp_path_factory.mktemp("runs")
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [f"run_root={root}",
                                                      "mix.validation_problems=4"])
    smoke_watch.started = time.time()
    if smoke_watch.url is not None:
        smoke_watch.before = promql.teacher_counts(smoke_watch.url)
    first = run_sweep(cfg)
    smoke_watch.ended = time.time()
    broken = tmp_path_factory.mktemp("broken") / "broken-student"  # its weights are missing
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    second = run_sweep(load_sweep(REPO / "sweeps" / "smoke.yaml", [
        f"run_root={root}", "name=smoke-failing", f"students=[tiny-random, {broken}]",
        "search.long_share=[0.5]"]))
    return cfg, first, second
