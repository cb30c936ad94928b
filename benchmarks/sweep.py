"""Sweep overhead: how much of a trial's wall time is spent outside training and evaluation, and
how many generation runs K trials cost (must be one per teacher, whatever K).

    .venv/bin/python benchmarks/sweep.py [--trials 4] [--sweep sweeps/smoke.yaml]

Runs the sweep file on a fresh local Ray cluster (2 CPUs, as CI) with a grid of K long shares,
in a fresh run root, then reads each trial's own timings (logged by `mixray.sweep.tune.run_trial`):
time_trial_s = mix + train + eval + the rest (MLflow child run, config, reading pools). Two
shares are reported:

- ``overhead_share_in_trial``: 1 - (train + eval) / trial, averaged over trials (target <= 0.15);
- ``overhead_share_of_trials_phase``: 1 - sum(train + eval) / (trials phase wall x concurrency),
  which also counts Tune's scheduling and actor start-up between trials.

The generation count is the number of generate stages that ran (not from cache) per teacher.
Results go to benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import ray

from mixray import runtime
from mixray.config import load_sweep
from mixray.sweep.resources import max_concurrent_trials
from mixray.sweep.run import run_sweep

OUT = Path(__file__).parent / "results" / "sweep.json"
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", default=str(REPO / "sweeps" / "smoke.yaml"))
    parser.add_argument("--trials", type=int, default=4, help="K: long shares in the grid")
    args = parser.parse_args()
    shares = [round(i / max(1, args.trials - 1), 3) for i in range(args.trials)]
    with tempfile.TemporaryDirectory() as root:
        cfg = load_sweep(args.sweep, [f"run_root={root}", f"search.long_share={shares}"])
        runtime.connect(num_cpus=2, include_dashboard=False)
        try:
            started = time.perf_counter()
            summary = run_sweep(cfg)
            wall = time.perf_counter() - started
            concurrency = max_concurrent_trials(cfg, ray.cluster_resources()["CPU"])
        finally:
            ray.shutdown()
    result = measure(summary, wall, concurrency, len(cfg.teachers))
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def measure(summary: dict, wall: float, concurrency: int, n_teachers: int) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    runs = [client.get_run(r) for r in _child_ids(client, summary)]
    times = [{k: r.data.metrics[k] for k in ("time_mix_s", "time_train_s", "time_eval_s",
                                              "time_trial_s")} for r in runs]
    work = [t["time_train_s"] + t["time_eval_s"] for t in times]
    in_trial = [1 - w / t["time_trial_s"] for w, t in zip(work, times, strict=True)]
    phase = summary["timings_s"]["trials"]
    generated = sum(1 for name, s in summary["stages"].items()
                    if name.startswith("generate.") and not s["cached"])
    return {
        "trials": len(runs),
        "status": summary["status"],
        "generation_runs_per_teacher": generated / n_teachers,
        "overhead_share_in_trial": sum(in_trial) / len(in_trial),
        "overhead_share_of_trials_phase": 1 - sum(work) / (phase * concurrency),
        "concurrency": concurrency,
        "per_trial_s": times,
        "stages_s": summary["timings_s"],
        "sweep_wall_s": wall,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def _child_ids(client, summary: dict) -> list[str]:
    exp = client.get_experiment_by_name(summary["mlflow"]["experiment"])
    parent = summary["mlflow"]["parent_run_id"]
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    return [r.info.run_id for r in runs if r.info.status == "FINISHED"]


if __name__ == "__main__":
    main()
