"""Ray Tune over the search space: each trial (`mixray.sweep.trial.run_trial`) runs mix -> train
-> evaluate on its own config.

Grid and random search run an explicit list of trials (`SweepConfig.trials()`), so names are
stable and `--resume` reruns only the missing ones; Optuna (TPE) proposes points while the sweep
runs, one study per student, and a resumed study is told the finished trials first. ASHA stops
trials early on a metric Ray Train forwards to Tune while training (`TuneReportCallback`), at
least at the steps of its rungs: train_loss, or val_loss on the problems the mix holds out
(mix.validation_problems), which unlike the training loss compares trials with different mixes.

The trial itself reserves almost nothing (0.01 CPU); its TorchTrainer asks for its own workers,
which Tune does not count (Ray Train V2), so concurrency is derived from the declared resources
(`mixray.sweep.resources`) to keep trials from waiting on each other forever.

Trials are `mixray.search.Trial` records and each run returns an `Outcome`, which carries the
trial's own config for every step after it. Tune carries a grid trial in its config as a plain
dict (`_grid_space` / `_grid_trial`, the one boundary).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from mixray import cluster, disk, logs
from mixray.config import SweepConfig
from mixray.search import Domain, Trial, trial_name
from mixray.sweep.callbacks import COMPLETE, TrialConsole, TrialStateMetrics
from mixray.sweep.resources import TRIAL_CPU, max_concurrent_trials
from mixray.sweep.trial import SweepContext, run_trial
from mixray.tracking import Finished

log = logging.getLogger(__name__)
NOT_HISTORY = {*AUTO_RESULT_KEYS, "done", "trial_id", "checkpoint_path", "should_checkpoint",
               COMPLETE}


@dataclass(frozen=True)
class Outcome:
    """A trial that ran in this invocation, as Tune left it."""

    trial: Trial
    metrics: dict[str, Any]  # its last report
    error: str | None  # why it failed; None: it finished or the scheduler stopped it
    stopped_early: bool  # the scheduler (ASHA) stopped it
    history: list[dict[str, float]]  # the per-step reports Ray Train forwarded
    config: SweepConfig  # the trial's own (SweepConfig.for_trial): what later steps read


def discard_stopped(ctx: SweepContext, outcomes: list[Outcome]) -> None:
    """Delete the checkpoints of the trials the scheduler stopped (train.keep_checkpoints:
    resume): they hold no exported student, and a stop is a verdict, not a failure to resume
    from. Should a --resume of a sweep that failed elsewhere rerun one, it trains from step 0
    (the data order is a function of the step: the same run)."""
    if ctx.cfg.train.keep_checkpoints != "resume":
        return
    for o in outcomes:
        if o.stopped_early:
            freed = disk.remove(ctx.train_run(o.trial.name))
            log.info("trial %s stopped early: freed %s of checkpoints", o.trial.name,
                     disk.human_size(freed))


# Tune logs a trial's config itself (params.json, progress.csv, TensorBoard hparams) by
# flattening its dicts: a dataclass would be logged as its repr, or dropped. So a grid trial
# crosses Tune as a dict, turned back into a Trial on the way out.
def _grid_space(todo: list[Trial]) -> dict[str, Any]:
    return {"trial": tune.grid_search([asdict(t) for t in todo])}


def _grid_trial(config: dict[str, Any]) -> Trial:
    return Trial(**config["trial"])


def _grid_trainable(config: dict[str, Any], ctx: SweepContext) -> None:
    logs.configure()
    metrics = run_trial(_grid_trial(config), ctx)
    tune.report(metrics | {COMPLETE: True})


def _optuna_trainable(config: dict[str, Any], ctx: SweepContext, student: str) -> None:
    logs.configure()
    trial = optuna_trial(ctx.cfg, student, config, tune.get_context().get_trial_id())
    metrics = run_trial(trial, ctx)
    tune.report(metrics | {COMPLETE: True})


# Optuna's categorical values must be plain scalars; a `choice` of mappings (whole schedules)
# is searched as the index into its list.
def _tune_domain(d: Domain) -> Any:
    if d.choice is not None:
        return tune.choice(list(range(len(d.choice))))
    return tune.uniform(*d.uniform) if d.uniform is not None else tune.loguniform(*d.loguniform)


def _decode(d: Domain, value: Any) -> Any:
    return d.choice[int(value)] if d.choice is not None else float(value)


def _encode(d: Domain, value: Any) -> Any:
    return d.choice.index(value) if d.choice is not None else value


def optuna_trial(cfg: SweepConfig, student: str, config: dict[str, Any], trial_id: str) -> Trial:
    """The trial an Optuna proposal ({p0: .., p1: ..}) stands for; its name ends in Tune's id."""
    axes = list(cfg.search.space.items())
    params = {key: _decode(d, config[f"p{i}"]) for i, (key, d) in enumerate(axes)}
    return Trial(name=trial_name(student, params, suffix=trial_id), student=student,
                 params=params)


def _scheduler(cfg: SweepConfig) -> ASHAScheduler | None:
    s = cfg.search.scheduler
    if s.kind == "fifo":
        return None
    # Rungs count training steps (the loop's `step`), not reports: Train sends one at most every
    # 2 s (train/launch.py) and always at the rungs' steps (trial.rung_steps). The
    # trial's last report (evaluation) has no step and so never enters a rung. No max_t:
    # training length is the train section's business; never stop a trial for age.
    return ASHAScheduler(time_attr="step", metric=s.metric, mode=s.mode,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                         max_t=10**9, stop_last_trials=False)


def _fit(ctx: SweepContext, trainable, param_space: dict, num_samples: int, concurrency: int,
         name: str, search_alg: OptunaSearch | None = None) -> tune.ResultGrid:
    tuner = tune.Tuner(
        # On the train workers' node type too, when one is named: a trial function left to go
        # anywhere (a head with no CPUs, KubeRay's habit) lands on a teacher node and keeps an
        # idle 8-GPU node from being removed for the whole sweep.
        tune.with_resources(trainable, {"CPU": TRIAL_CPU} | (
            {node_type: cluster.NODE_TYPE_SHARE}
            if (node_type := ctx.cfg.resources.node_types.train_workers) else {})),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=num_samples, max_concurrent_trials=concurrency,
                                    search_alg=search_alg, scheduler=_scheduler(ctx.cfg)),
        run_config=tune.RunConfig(name=name, storage_path=str(ctx.cfg.root.tune),
                                  callbacks=[TrialStateMetrics(name), TrialConsole()],
                                  # A trial whose process is lost with its node (or that
                                  # fails) runs again, up to train.max_failures times: its
                                  # Train run (same name) resumes from its last checkpoint,
                                  # its MLflow child run continues (tracking.start_child).
                                  failure_config=tune.FailureConfig(
                                      max_failures=ctx.cfg.train.max_failures)),
    )
    return tuner.fit()


def run_tune(ctx: SweepContext, todo: list[Trial], done: dict[str, Finished]) -> list[Outcome]:
    """Run the trials still to do (grid and random search) or Optuna's proposals, told the `done`
    ones; return one outcome per trial that ran now."""
    cfg = ctx.cfg
    # what the train workers' node type has or may add, when one is named (their only home)
    capacity = cluster.capacity(node_type=cfg.resources.node_types.train_workers)
    concurrency = max_concurrent_trials(cfg, capacity.get("CPU", 0.0), capacity.get("GPU", 0.0))
    base = f"{cfg.name}-{ctx.invocation}"
    if not cfg.search.proposes_while_running:
        log.info("tune: %d trials, %d at a time", len(todo), min(concurrency, len(todo)))
        trainable = tune.with_parameters(_grid_trainable, ctx=ctx)
        grid = _fit(ctx, trainable, _grid_space(todo), 1, concurrency, base)
        return [_outcome(r, _grid_trial(r.config), cfg) for r in grid]
    # Optuna's metric arrives only with a trial's last report (after evaluation); the
    # intermediate Train reports carry the scheduler's metric, so Tune's strict check must go.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    outcomes = []
    for student in cfg.students:
        finished = [d for d in done.values() if d.student == student]
        remaining = cfg.search.num_samples - len(finished)
        if remaining <= 0:
            continue
        search = _optuna_search(cfg, finished)
        log.info("tune: optuna proposes %d trials for %s (%d told from before), %d at a time",
                 remaining, student, len(finished), min(concurrency, remaining))
        trainable = tune.with_parameters(_optuna_trainable, ctx=ctx, student=student)
        space = {f"p{i}": _tune_domain(d) for i, d in enumerate(cfg.search.space.values())}
        grid = _fit(ctx, trainable, space, remaining, concurrency,
                    f"{base}-{Path(student).name}", search)
        outcomes += [_outcome(r, optuna_trial(cfg, student, r.config, r.metrics["trial_id"]),
                              cfg) for r in grid]
    return outcomes


class _FinalMetricOptuna(OptunaSearch):
    """OptunaSearch told only the results that carry its metric: a trial's last report, after
    evaluation. Ray Train's per-step reports before it carry training metrics only, and stock
    OptunaSearch fails on them (KeyError), as Optuna's pruning reports would expect."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def _optuna_search(cfg: SweepConfig, finished: list[Finished]) -> OptunaSearch:
    """TPE seeded from the sweep, told the finished trials of an interrupted run first."""
    s, axes = cfg.search, list(cfg.search.space.items())
    told = [d for d in finished if d.metrics.get(s.metric) is not None]
    points = [{f"p{i}": _encode(dom, d.params[key]) for i, (key, dom) in enumerate(axes)}
              for d in told]
    # TPE's first 10 points are random draws from its seed, whatever it was told: seeded as the
    # first run was, a resumed study would propose the very points it was just told again.
    return _FinalMetricOptuna(metric=s.metric, mode=s.mode, seed=s.seed + len(told),
                        points_to_evaluate=points or None,
                        evaluated_rewards=[d.metrics[s.metric] for d in told] or None)


def _outcome(result: tune.Result, trial: Trial, cfg: SweepConfig) -> Outcome:
    metrics = dict(result.metrics or {})
    # Only ASHA stops a trial early. A trial Ctrl-C cut short also lacks COMPLETE, even one whose
    # last report was still on its way after it had finished in MLflow.
    stopped = (cfg.search.scheduler.kind == "asha" and result.error is None
               and not metrics.get(COMPLETE, False))
    return Outcome(trial=trial, metrics=metrics,
                   error=str(result.error) if result.error else None,
                   stopped_early=stopped, history=_train_history(result),
                   config=cfg.for_trial(trial.student, trial.params))


def _train_history(result: tune.Result) -> list[dict[str, float]]:
    """The per-step reports Ray Train forwarded (what MLflow gets for a trial stopped early)."""
    frame = result.metrics_dataframe
    if frame is None or "step" not in frame:
        return []
    frame = frame.dropna(subset=["step"])
    keep = [c for c in frame.columns if c not in NOT_HISTORY and not c.startswith("config/")]
    return [{k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and v == v}
            for row in frame[keep].to_dict("records")]
