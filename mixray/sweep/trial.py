"""One trial of a sweep: its mix, its training and its evaluation, in its own MLflow run.

A trial runs inside a Ray Tune function trial (`mixray.sweep.tune`); its TorchTrainer asks for
its own workers. Everything a trial needs from before it (the teachers' pools, the placed
students, the held-out problems, the MLflow parent) arrives in one `SweepContext`; everything it
writes goes under the run root (`mixray.runroot`): its mix and evaluation in its trial folder,
its Ray Train run under ``train/``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from mixray import tracking
from mixray.config import SweepConfig
from mixray.evaluate.stage import evaluate_model
from mixray.metrics import set_context as set_metrics_context
from mixray.mix.stage import MixOutput, run_mix
from mixray.search import Trial
from mixray.train.launch import keep_only_student, train_from_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepContext:
    """What every trial shares: files from the upstream stages and the MLflow parent."""

    cfg: SweepConfig
    invocation: str  # a unique id of this sweep invocation (names trial outputs)
    pools: dict[str, Path]  # teacher label -> pool.parquet
    eval_problems: str
    student_paths: dict[str, str]  # student spec -> local HF dir
    parent_run_id: str
    # the problems' decontamination counts (their summary's), for each trial's data card
    decontamination: dict[str, Any] | None = None

    @property
    def target(self) -> tracking.Target:
        return tracking.Target(self.cfg.tracking_uri, self.cfg.experiment)

    def train_run(self, trial: str) -> Path:
        """Where Ray Train keeps a trial's run (the same on --resume)."""
        return self.cfg.root.train_run(self.invocation, trial)


def child_params(cfg: SweepConfig, trial: Trial) -> dict[str, Any]:
    """What a trial's MLflow run logs as params (`cfg`: the trial's own config): the report
    reads student, long_share, schedule and the mix's pools back from them."""
    return {"student": trial.student, "long_share": cfg.mix.long_share,
            "schedule": cfg.mix.schedule_label(), "search": trial.params,
            "teachers": {k: {"model": t.model, "style": t.style, "system_prompt": t.system_turn}
                         for k, t in cfg.teachers.items()},
            "mix": cfg.mix.model_dump(), "train": cfg.train.model_dump(),
            "evaluate": cfg.evaluate.model_dump()}


def run_trial(trial: Trial, ctx: SweepContext) -> dict[str, float]:
    """One trial: its mix, its training, its evaluation, in MLflow (with the node's system
    metrics while it runs). Returns the metrics, with the wall time of each part
    (benchmarks/sweep.py reads them)."""
    started = time.perf_counter()
    set_metrics_context(student=trial.student, trial=trial.name)  # labels its Train workers' too
    cfg = ctx.cfg.for_trial(trial.student, trial.params)
    out = cfg.root.trial(ctx.invocation, trial.name)
    out.mkdir(parents=True, exist_ok=True)
    target = ctx.target
    run_id = tracking.start_child(target, ctx.parent_run_id, trial.name, trial.params,
                                  child_params(cfg, trial), cfg.model_dump())
    stopping = _tune_stop_event()
    try:
        with tracking.system_metrics(target, run_id):
            metrics, history, mix, model_dir = _mix_train_evaluate(trial, ctx, cfg, run_id, out)
        metrics["time_trial_s"] = time.perf_counter() - started  # MLflow's own logging excepted
        tracking.finish_child(target, run_id, history, metrics, mix.card,
                              cfg.root.trial_eval(ctx.invocation, trial.name))
    except BaseException:
        if stopping.is_set():  # the driver closes a stopped trial's run (run.close_stopped)
            log.info("trial %s: stopped by Tune while running", trial.name)
        else:
            tracking.fail_child(target, run_id, traceback.format_exc())
        raise
    # Only now: a trial that fails before this point is rerun by --resume, and its Train run
    # (the same name) resumes from these checkpoints, even after a failed evaluation.
    if cfg.train.keep_checkpoints == "resume":
        keep_only_student(model_dir)
    return metrics


def _tune_stop_event() -> threading.Event:
    """Set once Tune has begun stopping this trial (ASHA's cut, the sweep ending). Ray 2.60's
    FunctionTrainable.cleanup sets it, then ends the actor; the ending can interrupt the trial's
    thread with an error that is not the trial's (tracking.fail_child). Ray has no public API
    for this, and cleanup drops the session, so the event is taken when the trial starts."""
    from ray.train._internal.session import get_session

    session = get_session()
    return session.stop_event if session is not None else threading.Event()


def rung_steps(cfg: SweepConfig) -> list[int]:
    """The steps a trial's scheduler judges it at, so Train reports those whatever its interval."""
    s = cfg.search.scheduler
    return s.rung_steps() if s.kind == "asha" else []


def _mix_train_evaluate(trial: Trial, ctx: SweepContext, cfg: SweepConfig, run_id: str,
                        out: Path) -> tuple[dict[str, float], list[dict], MixOutput, Path]:
    """The three parts of a trial: (metrics, the training history, the mix, the student)."""
    t0 = time.perf_counter()
    mix = run_mix(cfg.mix, ctx.pools, out, ctx.decontamination)
    tracking.log_mix_input(ctx.target, run_id, mix.manifest, mix.card["content_hash"])
    t1 = time.perf_counter()
    model_dir, history = train_from_config(
        cfg.train, model_path=ctx.student_paths[trial.student],
        manifest_path=str(mix.manifest), torch_threads=cfg.resources.torch_threads,
        validation_path=str(mix.validation) if mix.validation else None,
        cpus_per_worker=cfg.resources.cpus_per_train_worker,
        gpus_per_worker=cfg.resources.gpus_per_train_worker,
        node_type=cfg.resources.node_types.train_workers,
        storage=cfg.root.train, name=ctx.train_run(trial.name).name,
        start_timeout_s=cfg.resources.node_start_timeout_s,
        callbacks=[TuneReportCallback()],
        report_steps=rung_steps(ctx.cfg),  # the sweep's: a trial's cfg has no search
    )
    t2 = time.perf_counter()
    metrics = evaluate_model(
        model_dir, Path(ctx.eval_problems), cfg.evaluate, cfg.train.system_prompt,
        cfg.root.trial_eval(ctx.invocation, trial.name), root=cfg.run_root_path,
        placement=cfg.resources.placement("evaluation"),
    )
    t3 = time.perf_counter()
    metrics |= {k: v for k, v in history[-1].items() if k.startswith("val_loss")}
    metrics |= {"train_loss": history[-1]["train_loss"], "train_steps": len(history),
                "mix_rows": mix.card["rows"],
                # pools the others had to stand in for (data_card.json says where, how much)
                "mix_pools_ran_dry": len({d["pool"] for d in mix.card["ran_dry"]}),
                "time_mix_s": t1 - t0, "time_train_s": t2 - t1, "time_eval_s": t3 - t2}
    return metrics, history, mix, model_dir
