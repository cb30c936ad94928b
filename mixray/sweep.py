"""`python -m mixray.sweep [SWEEP.yaml] [--set a.b=v ...] [--dry-run]` — the one entry point.

Validates the sweep file (exit 2 with a readable message on any mistake, before any work), then:
models -> problems -> per-teacher generation and curation (cached, shared by all trials) ->
MLflow parent run -> Ray Tune trials (mix -> train -> evaluate) -> a summary table.
Ray is started or joined through `mixray.runtime`, as everywhere. What runs before the trials is
`mixray.upstream`'s (an `Upstream` record; teachers at once where they fit); the summary
(summary.json, the printed table) is a JSON document, built from the trial records
(`mixray.tune.Outcome`, `mixray.tracking.Finished`) in `_trial_rows`. The plan and the
resource check are `mixray.plan`'s; an invocation's state, `mixray.invocation`'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixray import cluster, console, cost_actual, disk, logs, runtime
from mixray.config import SweepConfig, load_sweep
from mixray.invocation import Invocation, trial_dir
from mixray.plan import check_resources, plan
from mixray.summary import format_summary
from mixray.upstream import Upstream, format_stages, run_upstream

if TYPE_CHECKING:  # imported where used: Ray, MLflow and the stages load slowly
    from mixray.analysis import Baseline, Findings, GapRow
    from mixray.significance import Comparison
    from mixray.tracking import Finished
    from mixray.tune import Outcome

log = logging.getLogger("mixray")
DEFAULT_SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "laptop.yaml"


def prepare(cfg: SweepConfig, timings: dict[str, float]) -> tuple[SweepConfig, Upstream]:
    """Check that the sweep fits the cluster, then run everything before the trials; returns
    the sweep with its run root resolved (trial processes run in other working directories)
    and `run_upstream`'s results. Raises GenerationFailed when a teacher fails too often."""
    cfg = cfg.model_copy(update={"run_root": str(cfg.run_root_path)})
    check_resources(cfg, cluster.capacity())
    return cfg, run_upstream(cfg, timings)


def _trial_rows(cfg: SweepConfig, outcomes: list[Outcome],
                done: dict[str, Finished]) -> list[dict[str, Any]]:
    """One summary row per trial: finished before (resumed), run now (finished, failed or
    stopped early), or — for grid and random search — one that never ran."""
    from mixray.tracking import SUMMARY_METRICS

    keys = (*SUMMARY_METRICS, *cost_actual.TRIAL_TIMES)  # times: the cost comparison's
    metric = cfg.search.metric  # "value": what "best" means
    rows = []
    for name, d in done.items():
        rows.append({"trial": name, "student": d.student, "params": d.params,
                     "resumed": True, "error": None, "stopped_early": False}
                    | {k: d.metrics.get(k) for k in keys} | {"value": d.metrics.get(metric)})
    for o in outcomes:
        row = {"trial": o.trial.name, "student": o.trial.student, "params": o.trial.params,
               "resumed": False, "error": o.error, "stopped_early": o.stopped_early}
        row |= {k: o.metrics.get(k) for k in keys} | {"value": o.metrics.get(metric)}
        if row["error"] is None and not o.stopped_early and row["eval_accuracy"] is None:
            row["error"] = "did not finish"
        rows.append(row)
    if cfg.search.algorithm != "optuna":
        ran = {r["trial"] for r in rows}
        rows += [{"trial": t.name, "student": t.student, "params": t.params,
                  "resumed": False, "error": "did not run", "stopped_early": False}
                 | dict.fromkeys((*SUMMARY_METRICS, "value")) for t in cfg.trials()
                 if t.name not in ran]
    for row in rows:
        row["long_share"] = cfg.for_trial(row["student"], row["params"]).mix.long_share
    return sorted(rows, key=lambda r: (r["student"], r["long_share"], r["trial"]))


def _close_stopped(cfg: SweepConfig, parent_id: str, outcomes: list[Outcome]) -> None:
    """Trials the scheduler stopped were killed mid-training: record them in MLflow."""
    from mixray import tracking

    for o in outcomes:
        if not o.stopped_early:
            continue
        run_id = tracking.find_child(cfg, parent_id, o.trial.name)
        if run_id is not None:
            step = int(o.history[-1]["step"]) if o.history else 0
            tracking.stop_child(cfg, run_id, o.history,
                                f"{cfg.search.scheduler.kind} at step {step}")


def sweep_findings(cfg: SweepConfig, invocation: str, trials: list[dict[str, Any]],
                   baselines: dict[str, Baseline]) -> Findings:
    """The gaps with their paired intervals, the gains over the base models and the power, from
    this invocation's summary rows (trials finished now or before) and the per-problem scores
    their evaluations wrote: the analysis the report runs on what MLflow holds, without reading
    back what the sweep has in hand."""
    from mixray import tracking
    from mixray.analysis import Trial, analyse
    from mixray.evaluate.stage import SCORES_FILE
    from mixray.search import SEED, point_label
    from mixray.significance import Scores

    records = []
    for row in trials:
        one = cfg.for_trial(row["student"], row["params"])
        finished = row["error"] is None and not row["stopped_early"]
        scores = trial_dir(cfg.run_root_path, invocation, row["trial"]) / "eval" / SCORES_FILE
        records.append(Trial(
            run_id=row["trial"], name=row["trial"], status="FINISHED" if finished else "FAILED",
            student=row["student"], share=one.mix.long_share,
            pools=(one.mix.long_pool, one.mix.short_pool), schedule=tracking.schedule_label(one),
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
    from mixray.baseline import evaluate_baselines
    from mixray.generate.stage import GenerationFailed
    from mixray.tune import SweepContext, discard_stopped, run_tune

    assert ray.is_initialized(), "connect to Ray first (the CLI or a test fixture does)"
    cfg = cfg.model_copy(update={"run_root": str(cfg.run_root_path)})
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
        done = tracking.reopen_parent(cfg, inv.parent_run_id)
    else:
        # the parent's upstream.json artifact is a JSON document: plain dicts at this boundary
        inv.parent_run_id = tracking.start_parent(cfg, {"curate": up.curate,
                                                        "stages": up.stages})
        tracking.log_upstream_inputs(cfg, inv.parent_run_id, up.problems.path, up.pools)
        inv.save("running")
    t0 = time.perf_counter()
    baselines = evaluate_baselines(cfg, up.paths, up.problems.path / "eval.parquet",
                                   inv.parent_run_id, inv.trial_dir("_baselines"))
    timings["baselines"] = time.perf_counter() - t0
    todo = [] if cfg.search.algorithm == "optuna" else \
        [t for t in cfg.trials() if t.name not in done]
    log.info("trials: %d to run, %d finished before", cfg.n_trials() - len(done), len(done))
    ctx = SweepContext(cfg=cfg, invocation=inv.id, pools=up.pools,
                       eval_problems=str(up.problems.path / "eval.parquet"),
                       student_paths={s: str(up.paths[s]) for s in cfg.students},
                       parent_run_id=inv.parent_run_id)
    t0 = time.perf_counter()
    status = "interrupted"
    try:
        outcomes = run_tune(ctx, todo, done) if cfg.n_trials() > len(done) else []
        _close_stopped(cfg, inv.parent_run_id, outcomes)
        discard_stopped(ctx, outcomes)
        trials = _trial_rows(cfg, outcomes, done)
        found = sweep_findings(cfg, inv.id, trials, baselines)
        tracking.log_gaps(cfg, inv.parent_run_id, gap_metrics(found))
        status = "finished" if all(t["error"] is None for t in trials) else "failed"
    finally:
        timings["trials"] = time.perf_counter() - t0
        inv.save(status)
        tracking.end_parent(cfg, inv.parent_run_id, {"finished": "FINISHED", "failed": "FAILED",
                                                     "interrupted": "KILLED"}[status])
    summary = {"invocation": inv.id, "status": status, "stages": up.stages, "trials": trials,
               "gaps": [_gap_dict(g) for g in found.gaps],
               "baselines": {k: {"accuracy": b.accuracy, "stderr": b.stderr}
                             for k, b in baselines.items()},
               "points": [p.record() for p in found.points],
               "power": asdict(found.power) if found.power else None, "timings_s": timings,
               "mlflow": {"tracking_uri": cfg.tracking_uri, "experiment": cfg.experiment,
                          "parent_run_id": inv.parent_run_id},
               # the whole run root, other sweeps' runs included: what this disk holds now
               "disk": {"run_root": str(cfg.run_root_path),
                        "bytes": disk.tree_size(cfg.run_root_path)}}
    summary["cost"] = cost_actual.compare(cfg, summary, up.paths)  # estimate against actual
    (inv.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_path"] = str(inv.dir / "summary.json")
    return summary


def _test_dict(test: Comparison | None) -> dict[str, Any] | None:
    return None if test is None else asdict(test) | {"significant": test.significant}


def _gap_dict(g: GapRow) -> dict[str, Any]:
    return {"student": g.student, "pools": list(g.pools), "name": g.gap_name, "gap": g.gap,
            "p_first": g.p_first, "p_second": g.p_second, "best_single": g.best_single,
            "best_mix_share": g.best_mix.share if g.best_mix else None,
            "best_mix_accuracy": g.best_mix.accuracy if g.best_mix else None,
            "best_mix_gain": g.mix_gain, "gap_test": _test_dict(g.gap_test),
            "best_mix_test": _test_dict(g.mix_test)}




def _run(cfg: SweepConfig, args: argparse.Namespace, log: Path | None) -> tuple[int, str]:
    """Run the sweep as the CLI asked: (exit code, what to print: the summary or the error);
    ``log``: where the rest of the output went (a failed trial's full traceback is there)."""
    from mixray.generate.stage import GenerationFailed

    start = time.perf_counter()
    try:
        # RAY_ADDRESS (set by `ray job submit`) makes this join that cluster; else a local one.
        with runtime.connected():
            if args.upstream_only:
                timings: dict[str, float] = {}
                stages = format_stages(prepare(cfg, timings)[1].stages)
                return 0, stages + "\ntime: " + ", ".join(f"{k} {v:.1f}s"
                                                          for k, v in timings.items())
            summary = run_sweep(cfg, resume=args.resume)
    except ValueError as e:  # a mistake found once Ray is up: resources, --resume, empty pools
        return 2, f"error: {e}"
    except GenerationFailed as e:  # too many failed rows: kept uncommitted, a rerun retries them
        return 1, f"error: {e}"
    except KeyboardInterrupt:
        return 130, (f"\ninterrupted; continue with: python -m mixray.sweep {args.sweep} "
                     "--resume")
    return (0 if summary["status"] == "finished" else 1,
            format_summary(cfg, summary, log)
            + f"\nsweep {summary['status']} in {time.perf_counter() - start:.0f} s")


def output_log(cfg: SweepConfig) -> Path:
    """Where a quiet console sends Ray's, Tune's, DeepSpeed's and the workers' output."""
    return cfg.run_root_path / "logs" / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixray.sweep",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sweep", nargs="?", default=str(DEFAULT_SWEEP), help="sweep YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override any key of the sweep file (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan, exit")
    parser.add_argument("--upstream-only", action="store_true",
                        help="generate and curate the teachers' pools (cached as usual), print "
                        "what each holds, and stop before the trials")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest interrupted run of this sweep: same MLflow "
                        "parent, finished trials are not rerun")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's, Tune's, DeepSpeed's and the workers' output here too "
                        "(by default it goes to a log file under the run root)")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        cfg = load_sweep(args.sweep, args.set)
        print(plan(cfg))
    except ValueError as e:  # config.SweepFileError, or cost.calibrate_from that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    if args.verbose:
        code, text = _run(cfg, args, None)
    else:
        path = output_log(cfg)
        print(f"output of Ray, Tune, DeepSpeed and the workers: {path} (--verbose: here)",
              flush=True)
        with console.redirected(path):
            code, text = _run(cfg, args, path)
            print(text)  # into the log as well
    print(text, file=sys.stderr if text.startswith(("error:", "\ninterrupted")) else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
