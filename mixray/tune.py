"""Ray Tune over the mix: one function trial per grid point runs mix -> train -> evaluate.

The trial itself reserves almost nothing (0.01 CPU); its TorchTrainer asks for its own workers,
which Tune does not count (Ray Train V2), so concurrency is derived from the declared resources
(`SweepConfig.max_concurrent_trials`) to keep trials from waiting on each other forever.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from mixray import logs, tracking
from mixray.config import TRIAL_CPU, SweepConfig, trial_name
from mixray.evaluate import evaluate_model
from mixray.mix.manifest import build_manifest
from mixray.train.launch import train_from_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepContext:
    """What every trial shares: files from the upstream stages and the MLflow parent."""

    cfg: SweepConfig
    invocation: str  # a unique id of this sweep invocation (names trial outputs)
    pools: dict[str, str]  # teacher label -> pool.parquet
    eval_problems: str
    student_paths: dict[str, str]  # student spec -> local HF dir
    parent_run_id: str


def run_trial(trial: dict[str, Any], ctx: SweepContext) -> dict[str, float]:
    cfg = ctx.cfg
    out = cfg.run_root_path / "trials" / ctx.invocation / trial_name(trial)
    out.mkdir(parents=True, exist_ok=True)
    run_id = tracking.start_child(cfg, ctx.parent_run_id, trial)
    try:
        mix_cfg = cfg.mix.with_long_share(trial["long_share"])
        pools = {label: pq.read_table(ctx.pools[label]) for label in mix_cfg.pools}
        manifest = build_manifest(pools, mix_cfg)
        pq.write_table(manifest.table, out / "manifest.parquet")
        (out / "data_card.json").write_text(json.dumps(manifest.card, indent=2))

        t = cfg.train
        model_dir, history = train_from_config(
            t, model_path=ctx.student_paths[trial["student"]],
            manifest_path=str(out / "manifest.parquet"), torch_threads=cfg.resources.torch_threads,
            cpus_per_worker=cfg.resources.cpus_per_train_worker, storage=cfg.run_root_path / "train",
            name=f"{ctx.invocation}-{trial_name(trial)}", callbacks=[TuneReportCallback()],
        )
        metrics = evaluate_model(
            model_dir, Path(ctx.eval_problems), cfg.evaluate, t.system_prompt, out / "eval",
            cpus_per_engine=cfg.resources.cpus_per_engine, torch_threads=cfg.resources.torch_threads,
        )
        metrics |= {"train_loss": history[-1]["train_loss"], "train_steps": len(history),
                    "mix_rows": manifest.card["rows"]}
        tracking.finish_child(cfg, run_id, history, metrics, manifest.card)
        return metrics
    except BaseException:
        tracking.fail_child(cfg, run_id, traceback.format_exc())
        raise


def _trainable(config: dict[str, Any], ctx: SweepContext) -> None:
    logs.configure()
    metrics = run_trial(config["trial"], ctx)
    tune.report(metrics | {"done": True})


def run_tune(ctx: SweepContext, trials: list[dict[str, Any]]) -> tune.ResultGrid:
    """One Tune trial per entry of ``trials`` (a subset of the grid when resuming)."""
    cfg = ctx.cfg
    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    concurrency = min(cfg.max_concurrent_trials(cluster_cpus), len(trials))
    log.info("tune: %d trials, %d at a time", len(trials), concurrency)
    trainable = tune.with_resources(tune.with_parameters(_trainable, ctx=ctx), {"CPU": TRIAL_CPU})
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-{ctx.invocation}",
            storage_path=str(cfg.run_root_path / "tune"),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    return tuner.fit()
