"""One sweep invocation, from the upstream stages to summary.json: `run_sweep`.

Models -> problems -> per-teacher generation and curation (`mixray.sweep.upstream`: cached,
shared by all trials, teachers at once where they fit) -> the MLflow parent run -> the students'
baselines (`mixray.sweep.baseline`) -> Ray Tune's trials (`mixray.sweep.tune`) -> the summary.
The summary (summary.json, the printed table) is a JSON document: one row per trial, built from
the trial records (`mixray.sweep.tune.Outcome`, `mixray.tracking.Finished`) in `_trial_rows`,
and the findings in the shape the report writes too (`mixray.science.document`). An
invocation's state is `mixray.sweep.invocation`'s; every path, `mixray.runroot`'s.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixray import cluster, disk
from mixray.config import SweepConfig
from mixray.cost.actual import compare
from mixray.sweep.invocation import Invocation
from mixray.sweep.plan import check_resources, memory_plan
from mixray.sweep.upstream import Upstream, run_upstream

if TYPE_CHECKING:  # imported where used: Ray, MLflow and the stages load slowly
    from mixray.science.analysis import Baseline, Findings
    from mixray.science.significance import Comparison
    from mixray.sweep.tune import Outcome
    from mixray.tracking import Finished, Target

log = logging.getLogger("mixray")


def prepare(cfg: SweepConfig, timings: dict[str, float]) -> tuple[SweepConfig, Upstream]:
    """Check that the sweep fits the cluster, then run everything before the trials; returns
    the sweep with its run root resolved (trial processes run in other working directories)
    and `run_upstream`'s results. Raises GenerationFailed when a teacher fails too often."""
    cfg = cfg.model_copy(update={"run_root": str(cfg.run_root_path)})
    check_resources(cfg, cluster.capacity())
    # the GPU memory its node types declare (clusters/*.yaml: gpu_memory_gib), as --dry-run
    # --cluster read it from the file
    log.info("%s", memory_plan(cfg, cluster.gpu_memory(cluster.running_groups()),
                               "the running cluster"))
    return cfg, run_upstream(cfg, timings)


def trial_configs(cfg: SweepConfig, outcomes: list[Outcome],
                  done: dict[str, Finished]) -> dict[str, SweepConfig]:
    """Each trial's own config (`SweepConfig.for_trial`), once, by trial name: those that ran
    now carry it; those finished before, and (grid, random) those that never ran, get it here."""
    configs = {o.trial.name: o.config for o in outcomes}
    configs |= {name: cfg.for_trial(d.student, d.params) for name, d in done.items()}
    if not cfg.search.proposes_while_running:
        configs |= {t.name: cfg.for_trial(t.student, t.params) for t in cfg.trials()
                    if t.name not in configs}
    return configs


def _trial_rows(cfg: SweepConfig, outcomes: list[Outcome], done: dict[str, Finished],
                configs: dict[str, SweepConfig]) -> list[dict[str, Any]]:
    """One summary row per trial (`science.document.trial_row`): finished before (resumed),
    run now (finished, failed or stopped early), or — for grid and random search — one that
    never ran."""
    from mixray.science.document import trial_row

    metric = cfg.search.metric  # "value": what "best" means

    def share(name: str) -> float:
        return configs[name].mix.long_share

    rows = [trial_row(name, d.student, d.params, share(name), d.metrics, d.metrics.get(metric),
                      error=None, stopped_early=False, resumed=True)
            for name, d in done.items()]
    for o in outcomes:
        finished = o.error is None and not o.stopped_early
        unfinished = finished and o.metrics.get("eval_accuracy") is None
        rows.append(trial_row(o.trial.name, o.trial.student, o.trial.params, share(o.trial.name),
                              o.metrics, o.metrics.get(metric),
                              error="did not finish" if unfinished else o.error,
                              stopped_early=o.stopped_early, resumed=False))
    if not cfg.search.proposes_while_running:
        ran = {r["trial"] for r in rows}
        rows += [trial_row(t.name, t.student, t.params, share(t.name), {}, None,
                           error="did not run", stopped_early=False, resumed=False)
                 for t in cfg.trials() if t.name not in ran]
    return sorted(rows, key=lambda r: (r["student"], r["long_share"], r["trial"]))


def _close_stopped(cfg: SweepConfig, target: Target, parent_id: str,
                   outcomes: list[Outcome]) -> None:
    """Trials the scheduler stopped were killed mid-training: record them in MLflow."""
    from mixray import tracking

    for o in outcomes:
        if not o.stopped_early:
            continue
        run_id = tracking.find_child(target, parent_id, o.trial.name)
        if run_id is not None:
            step = int(o.history[-1]["step"]) if o.history else 0
            tracking.stop_child(target, run_id, o.history,
                                f"{cfg.search.scheduler.kind} at step {step}")


def sweep_findings(cfg: SweepConfig, invocation: str, trials: list[dict[str, Any]],
                   baselines: dict[str, Baseline],
                   configs: dict[str, SweepConfig]) -> Findings:
    """The gaps with their paired intervals, the gains over the base models and the power, from
    this invocation's summary rows (trials finished now or before) and the per-problem scores
    their evaluations wrote: the analysis the report runs on what MLflow holds, without reading
    back what the sweep has in hand."""
    from mixray.runroot import SCORES_FILE
    from mixray.science.analysis import Trial, analyse
    from mixray.science.significance import Scores
    from mixray.search import SEED, point_label

    records = []
    for row in trials:
        one = configs[row["trial"]]
        finished = row["error"] is None and not row["stopped_early"]
        scores = cfg.root.trial_eval(invocation, row["trial"]) / SCORES_FILE
        records.append(Trial(
            run_id=row["trial"], name=row["trial"], status="FINISHED" if finished else "FAILED",
            student=row["student"], share=one.mix.long_share,
            pools=(one.mix.long_pool, one.mix.short_pool), schedule=one.mix.schedule_label(),
            accuracy=row["eval_accuracy"], stderr=row["eval_accuracy_stderr"],
            train_loss=row["train_loss"], loss_curve=(), benchmarks={}, data_card=None,
            error=row["error"], seed=row["params"].get(SEED), point=point_label(row["params"]),
            value=row["value"],
            scores=Scores.from_json(json.loads(scores.read_text()))
            if finished and scores.is_file() else None))
    s = cfg.search
    return analyse(records, baselines, cfg.evaluate.sampling.n, s.metric, s.mode, cfg.analysis)


def _test_metrics(prefix: str, test: Comparison | None) -> dict[str, float]:
    if test is None:
        return {}
    return {f"{prefix}_low": test.low, f"{prefix}_high": test.high,
            f"{prefix}_p_value": test.p_value, f"{prefix}_significant": float(test.significant)}


def gap_metrics(found: Findings) -> dict[str, float]:
    """The parent run's comparison metrics: per student and pair of pools the gap and the best
    mix's margin over the best single source, each with its interval; the power."""
    out = {}
    for r in found.gaps:
        key = f"{Path(r.student).name}/{r.pools[0]}_vs_{r.pools[1]}"
        for name, value in (("gap", r.gap), ("best_mix_gain", r.mix_gain),
                            ("best_mix_share", r.best_mix.share if r.best_mix else None)):
            if value is not None:
                out[f"{key}/{name}"] = value
        out |= _test_metrics(f"{key}/gap", r.gap_test)
        out |= _test_metrics(f"{key}/best_mix_gain", r.mix_test)
    if found.power is not None:
        out |= {"power/detectable_difference": found.power.detectable,
                "power/problems_needed": float(found.power.needed)}
    return out


def run_sweep(cfg: SweepConfig, resume: bool = False) -> dict[str, Any]:
    """Run a validated sweep on the connected Ray cluster; return the summary (also on disk).

    With ``resume``, continue the latest interrupted invocation: same MLflow parent, and only
    the trials that have not finished run again.
    """
    import ray

    from mixray import tracking
    from mixray.generate.stage import GenerationFailed
    from mixray.science.document import findings_document
    from mixray.sweep.baseline import evaluate_baselines
    from mixray.sweep.trial import SweepContext
    from mixray.sweep.tune import discard_stopped, run_tune

    assert ray.is_initialized(), "connect to Ray first (the CLI or a test fixture does)"
    cfg = cfg.model_copy(update={"run_root": str(cfg.run_root_path)})
    target = tracking.Target(cfg.tracking_uri, cfg.experiment)
    inv = Invocation.latest_unfinished(cfg) if resume else Invocation.new(cfg)
    inv.save("running")
    timings: dict[str, float] = {}
    try:
        cfg, up = prepare(cfg, timings)
    except GenerationFailed:
        inv.save("failed")  # --resume continues it; the generation keeps its finished rows
        raise

    done: dict[str, Finished] = {}
    if inv.parent_run_id:
        done = tracking.reopen_parent(target, inv.parent_run_id, cfg.search.metric)
    else:
        # the parent's upstream.json artifact is a JSON document: plain dicts at this boundary
        inv.parent_run_id = tracking.start_parent(
            target, f"{cfg.name}-sweep", cfg.model_dump(),
            {"curate": up.curate, "stages": up.stages()})
        tracking.log_upstream_inputs(target, inv.parent_run_id, up.problems.path, up.pools)
        tracking.log_decontamination(target, inv.parent_run_id, up.problems_summary)
        inv.save("running")
    t0 = time.perf_counter()
    baselines = evaluate_baselines(cfg, target, up.paths, up.problems.path / "eval.parquet",
                                   inv.parent_run_id, cfg.root.baselines(inv.id))
    timings["baselines"] = time.perf_counter() - t0
    todo = [] if cfg.search.proposes_while_running else \
        [t for t in cfg.trials() if t.name not in done]
    log.info("trials: %d to run, %d finished before", cfg.n_trials() - len(done), len(done))
    ctx = SweepContext(cfg=cfg, invocation=inv.id, pools=up.pools,
                       eval_problems=str(up.problems.path / "eval.parquet"),
                       student_paths={s: str(up.paths[s]) for s in cfg.students},
                       parent_run_id=inv.parent_run_id,
                       decontamination=up.problems_summary.get("decontamination"))
    t0 = time.perf_counter()
    status = "interrupted"
    try:
        outcomes = run_tune(ctx, todo, done) if cfg.n_trials() > len(done) else []
        _close_stopped(cfg, target, inv.parent_run_id, outcomes)
        discard_stopped(ctx, outcomes)
        configs = trial_configs(cfg, outcomes, done)
        trials = _trial_rows(cfg, outcomes, done, configs)
        found = sweep_findings(cfg, inv.id, trials, baselines, configs)
        tracking.log_gaps(target, inv.parent_run_id, gap_metrics(found))
        status = "finished" if all(t["error"] is None for t in trials) else "failed"
    finally:
        timings["trials"] = time.perf_counter() - t0
        inv.save(status)
        tracking.end_parent(target, inv.parent_run_id, {
            "finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[status])
    summary = {"invocation": inv.id, "status": status, "stages": up.stages(), "trials": trials}
    summary |= findings_document(found, baselines) | {
        "timings_s": timings,
        "mlflow": {"tracking_uri": cfg.tracking_uri, "experiment": cfg.experiment,
                   "parent_run_id": inv.parent_run_id},
        # the whole run root, other sweeps' runs included: what this disk holds now
        "disk": {"run_root": str(cfg.run_root_path), "bytes": disk.tree_size(cfg.run_root_path)}}
    # estimate against actual
    summary["cost"] = compare(cfg, summary, up.paths, up.teachers, configs)
    (inv.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_path"] = str(inv.dir / "summary.json")
    return summary
