"""`ray job submit --working-dir . -- python -m mixray.sweep sweeps/smoke.yaml` against a real
`ray start --head` on this machine: the job SUCCEEDS and its runs land in MLflow."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mixray.config import load_sweep

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(ray_cluster):
    """A second, separate Ray cluster (its own ports and temp dir), stopped afterwards.

    Depends on the session cluster only so that Ray has written ~/.ray/auth_token (a new
    cluster creates it) before `ray start` is asked for token auth."""
    gcs, dash, agent = _free_port(), _free_port(), _free_port()
    # Token auth stays on (Ray 2.60's default where ~/.ray/auth_token exists); the CLI matches it.
    # The job's entrypoint runs in the head's environment: put this venv first on its PATH.
    env = os.environ | {"RAY_AUTH_MODE": "token",
                        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"rayjob-{gcs}"  # short: unix socket paths are limited to 107 bytes
    subprocess.run([RAY, "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1", "--num-cpus=2", "--include-dashboard=true",
                    # The job agent's HTTP port defaults to 52365, which the test session's own
                    # cluster already holds: without its own port no job can be submitted.
                    f"--dashboard-agent-listen-port={agent}",
                    f"--temp-dir={temp}", "--disable-usage-stats"], env=env, check=True)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_cluster(temp)


def _stop_cluster(temp: Path) -> None:
    """`ray stop` would stop every Ray cluster on the machine (the test session's too): stop only
    the processes of this one, which all name its temp dir on their command line."""
    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"])
             if any(str(temp) in arg for arg in p.info["cmdline"] or [])]
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()


def test_job_submit_round_trip(head, smoke_sweep) -> None:
    dashboard, env = head
    run_root = smoke_sweep[0].run_root_path  # its generation is reused; the job has its own name
    submit = [RAY, "job", "submit", f"--address={dashboard}", "--working-dir", str(REPO),
              "--no-wait", "--", "python", "-m", "mixray.sweep", "sweeps/smoke.yaml",
              f"--set=run_root={run_root}", "--set=name=smoke-job", "--set=search.long_share=[0.5]"]
    for _ in range(24):  # right after `ray start` the job agent may not be up yet
        out = subprocess.run(submit, env=env, capture_output=True, text=True)
        if out.returncode == 0 or "No available agent" not in out.stderr:
            break
        time.sleep(5)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    job_id = re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)

    # The CLI, as a user would (its auth follows RAY_AUTH_MODE in env; the SDK reads it at import).
    def job(*args: str) -> str:
        r = subprocess.run([RAY, "job", *args, f"--address={dashboard}", job_id], env=env,
                           capture_output=True, text=True)
        return r.stdout + r.stderr

    deadline, status = time.monotonic() + 900, None
    while status is None:
        assert time.monotonic() < deadline, f"job {job_id} not done after 900 s"
        time.sleep(5)
        found = re.search(rf"Job '{job_id}' (succeeded|failed|was stopped)", job("status"))
        status = found.group(1) if found else None
    logs = job("logs")
    assert status == "succeeded", logs[-3000:]
    assert "eval acc" in logs  # the end-of-sweep table reached the job's log
    # The job's log is the sweep's console: mixray's lines and the summary; Ray's, Tune's and
    # the workers' output went to the file it names (under the run root).
    full = Path(re.search(r"output of Ray, Tune, DeepSpeed and the workers: (\S+)", logs)[1])
    assert full.is_relative_to(run_root) and full.is_file()
    output = full.read_text()
    assert "trials: " in logs and "baseline tiny-random" in logs
    for noise in ("Trial status:", "(RayTrainWorker pid=", "Reporting training result"):
        assert noise not in logs and noise in output, noise

    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [f"run_root={run_root}", "name=smoke-job"])
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    trials = client.search_runs([exp.experiment_id], "tags.`mixray.kind` = 'trial'")
    assert [r.info.status for r in trials] == ["FINISHED"]
    assert "eval_accuracy" in trials[0].data.metrics
