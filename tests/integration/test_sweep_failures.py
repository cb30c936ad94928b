"""Sweeps that go wrong: a failing trial (in the smoke fixture's second run) does not stop the
others; an interrupted sweep resumes without rerunning its finished trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from mixray.config import load_sweep
from mixray.sweep.run import run_sweep

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "sweeps" / "smoke.yaml")


def _children(cfg, parent_id: str) -> dict[str, list]:
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    by_name: dict[str, list] = {}
    for run in runs:
        by_name.setdefault(run.data.tags["mixray.trial"], []).append(run)
    return by_name


def test_a_failing_trial_is_marked_failed_and_the_others_finish(smoke_sweep) -> None:
    # The fixture's second run: students tiny-random and a folder whose weights are missing.
    cfg = load_sweep(SMOKE, [f"run_root={smoke_sweep[0].run_root_path}", "name=smoke-failing"])
    summary = smoke_sweep[2]
    assert summary["status"] == "failed"
    rows = {Path(t["student"]).name: t for t in summary["trials"]}
    assert set(rows) == {"tiny-random", "broken-student"}
    assert rows["tiny-random"]["error"] is None and rows["tiny-random"]["eval_accuracy"] is not None
    assert rows["broken-student"]["error"] is not None
    children = _children(cfg, summary["mlflow"]["parent_run_id"])
    assert children["tiny-random-long0.5"][0].info.status == "FINISHED"
    failed = children["broken-student-long0.5"][0]
    assert failed.info.status == "FAILED" and "mixray.error" in failed.data.tags
    parent = MlflowClient(tracking_uri=cfg.tracking_uri).get_run(summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FAILED"


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_cluster, smoke_sweep) -> None:
    overrides = [f"run_root={smoke_sweep[0].run_root_path}", "name=smoke-resume",
                 "search.max_concurrent_trials=1",
                 "train.num_workers=1"]  # one is enough here (each starts in 6 s)
    cfg = load_sweep(SMOKE, overrides)
    env = os.environ | {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "mixray.sweep", SMOKE] + [f"--set={o}" for o in overrides]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    client, deadline = MlflowClient(tracking_uri=cfg.tracking_uri), time.monotonic() + 600
    first_done = None
    while first_done is None:  # Ctrl-C as soon as the first trial has finished
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        assert time.monotonic() < deadline, "no trial finished in 600 s"
        time.sleep(1)
        exp = client.get_experiment_by_name(cfg.experiment)
        runs = client.search_runs([exp.experiment_id], "tags.`mixray.kind` = 'trial' and "
                                  "attributes.status = 'FINISHED'") if exp else []
        first_done = runs[0] if runs else None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) != 0

    summary = run_sweep(cfg, resume=True)
    assert summary["status"] == "finished"
    children = _children(cfg, summary["mlflow"]["parent_run_id"])
    assert set(children) == {"tiny-random-long0", "tiny-random-long0.5"}
    name = first_done.data.tags["mixray.trial"]
    assert [r.info.run_id for r in children[name]] == [first_done.info.run_id]  # not rerun
    assert {t["trial"]: t["resumed"] for t in summary["trials"]}[name] is True
    other = next(n for n in children if n != name)
    assert any(r.info.status == "FINISHED" for r in children[other])
    assert first_done.data.tags["mlflow.parentRunId"] == summary["mlflow"]["parent_run_id"]
