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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixray import cluster, cost_actual, disk, logs, runtime
from mixray.config import SweepConfig, load_sweep
from mixray.invocation import Invocation
from mixray.plan import check_resources, plan
from mixray.upstream import Upstream, format_stages, run_upstream

if TYPE_CHECKING:  # imported where used: Ray, MLflow and the stages load slowly
    from mixray.analysis import GapRow
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
    rows = []
    for name, d in done.items():
        rows.append({"trial": name, "student": d.student, "params": d.params,
                     "resumed": True, "error": None, "stopped_early": False}
                    | {k: d.metrics.get(k) for k in keys})
    for o in outcomes:
        row = {"trial": o.trial.name, "student": o.trial.student, "params": o.trial.params,
               "resumed": False, "error": o.error, "stopped_early": o.stopped_early}
        row |= {k: o.metrics.get(k) for k in keys}
        if row["error"] is None and not o.stopped_early and row["eval_accuracy"] is None:
            row["error"] = "did not finish"
        rows.append(row)
    if cfg.search.algorithm != "optuna":
        ran = {r["trial"] for r in rows}
        rows += [{"trial": t.name, "student": t.student, "params": t.params,
                  "resumed": False, "error": "did not run", "stopped_early": False}
                 | dict.fromkeys(SUMMARY_METRICS) for t in cfg.trials() if t.name not in ran]
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


def sweep_gaps(cfg: SweepConfig, trials: list[dict[str, Any]]) -> list[GapRow]:
    """ΔLong / ΔLarge and the best mix against the best single source, per student, from this
    invocation's summary rows (trials finished now or before): the same analysis the report
    runs on what MLflow holds, without reading back what the sweep has in hand."""
    from mixray import tracking
    from mixray.analysis import Trial, curve_points, gap_rows

    records = []
    for row in trials:
        one = cfg.for_trial(row["student"], row["params"])
        finished = row["error"] is None and not row["stopped_early"]
        records.append(Trial(
            run_id=row["trial"], name=row["trial"], status="FINISHED" if finished else "FAILED",
            student=row["student"], share=one.mix.long_share,
            pools=(one.mix.long_pool, one.mix.short_pool), schedule=tracking.schedule_label(one),
            accuracy=row["eval_accuracy"], stderr=row["eval_accuracy_stderr"],
            train_loss=row["train_loss"], loss_curve=(), benchmarks={}, data_card=None,
            error=row["error"]))
    return gap_rows(curve_points(records))


def gap_metrics(rows: list[GapRow]) -> dict[str, float]:
    out = {}
    for r in rows:
        key = f"{Path(r.student).name}/{r.pools[0]}_vs_{r.pools[1]}"
        for name, value in (("gap", r.gap), ("best_mix_gain", r.mix_gain),
                            ("best_mix_share", r.best_mix.share if r.best_mix else None)):
            if value is not None:
                out[f"{key}/{name}"] = value
    return out


def run_sweep(cfg: SweepConfig, resume: bool = False) -> dict[str, Any]:
    """Run a validated sweep on the connected Ray cluster; return the summary (also on disk).

    With ``resume``, continue the latest interrupted invocation: same MLflow parent, and only
    the trials that have not finished run again.
    """
    import ray

    from mixray import tracking
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
        inv.save("running")
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
        gaps = sweep_gaps(cfg, trials)
        tracking.log_gaps(cfg, inv.parent_run_id, gap_metrics(gaps))
        status = "finished" if all(t["error"] is None for t in trials) else "failed"
    finally:
        timings["trials"] = time.perf_counter() - t0
        inv.save(status)
        tracking.end_parent(cfg, inv.parent_run_id, {"finished": "FINISHED", "failed": "FAILED",
                                                     "interrupted": "KILLED"}[status])
    summary = {"invocation": inv.id, "status": status, "stages": up.stages, "trials": trials,
               "gaps": [_gap_dict(g) for g in gaps], "timings_s": timings,
               "mlflow": {"tracking_uri": cfg.tracking_uri, "experiment": cfg.experiment,
                          "parent_run_id": inv.parent_run_id},
               # the whole run root, other sweeps' runs included: what this disk holds now
               "disk": {"run_root": str(cfg.run_root_path),
                        "bytes": disk.tree_size(cfg.run_root_path)}}
    summary["cost"] = cost_actual.compare(cfg, summary, up.paths)  # estimate against actual
    (inv.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_path"] = str(inv.dir / "summary.json")
    return summary


def _gap_dict(g: GapRow) -> dict[str, Any]:
    return {"student": g.student, "pools": list(g.pools), "name": g.gap_name, "gap": g.gap,
            "p_first": g.p_first, "p_second": g.p_second, "best_single": g.best_single,
            "best_mix_share": g.best_mix.share if g.best_mix else None,
            "best_mix_accuracy": g.best_mix.accuracy if g.best_mix else None,
            "best_mix_gain": g.mix_gain}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mix_text(trial: dict[str, Any]) -> str:
    """The mix's rows, and how many of its pools ran dry (.0f: MLflow gives resumed counts back
    as floats)."""
    dry = trial.get("mix_pools_ran_dry")
    return _fmt(trial["mix_rows"], ".0f") + (f" ({dry:.0f} dry)" if dry else "")


def _params_text(params: dict[str, Any]) -> str:
    from mixray.search import value_token

    return " ".join(value_token(k, v) for k, v in params.items()) or "-"


def format_summary(cfg: SweepConfig, summary: dict[str, Any]) -> str:
    """Per student: trials (search values -> metrics), the best one, the gaps; then where to
    look."""
    blocks = []
    for student in cfg.students:
        trials = [t for t in summary["trials"] if t["student"] == student]
        rows = [("trial", "values", "long share", "mix rows", "train loss", "eval acc ± se",
                 "status")]
        for t in trials:
            status = ("FAILED" if t["error"] else "stopped early" if t["stopped_early"]
                      else "resumed" if t["resumed"] else "ok")
            rows.append((t["trial"], _params_text(t["params"]), f"{t['long_share']:g}",
                         _mix_text(t), _fmt(t["train_loss"], ".4f"),
                         _fmt(t["eval_accuracy"], ".3f") + " ± " +
                         _fmt(t["eval_accuracy_stderr"], ".3f"), status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"student {student}:"] + ["  " + "  ".join(c.ljust(w) for c, w in zip(
            r, widths, strict=True)) for r in rows]
        if dry := [t["trial"] for t in trials if t.get("mix_pools_ran_dry")]:
            lines.append(f"  pools ran dry (the others filled in) in {', '.join(dry)}: see "
                         "ran_dry in their data_card.json, or set mix.on_pool_exhausted: error")
        scored = [t for t in trials if t["eval_accuracy"] is not None]
        if scored:
            best = max(scored, key=lambda t: t["eval_accuracy"])
            lines.append(f"  best: {best['trial']} ({_params_text(best['params'])}), "
                         f"eval acc {best['eval_accuracy']:.3f}")
        for g in summary["gaps"]:
            if g["student"] == student and (g["gap"], g["best_mix_gain"]) != (None, None):
                lines.append(
                    f"  {g['name']} = P({g['pools'][0]} only) - P({g['pools'][1]} only) = "
                    f"{_fmt(g['gap'], '+.3f')}; best mix (share {_fmt(g['best_mix_share'], 'g')}) "
                    f"vs best single source: {_fmt(g['best_mix_gain'], '+.3f')}")
        blocks.append("\n".join(lines))
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings_s"].items())
    store = cfg.tracking_uri
    ui = (f"{store}   (the tracking server's own UI)" if store.startswith(("http:", "https:"))
          else f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri "
          f"{store} --workers 1 --host 127.0.0.1 --port 5000   # then open http://127.0.0.1:5000")
    size = f"run root: {summary['disk']['run_root']} {disk.human_size(summary['disk']['bytes'])}"
    if "cost" in summary:
        blocks.append(cost_actual.format_comparison(summary["cost"]))
    return ("\n" + format_stages(summary["stages"]) + "\n\n" + "\n\n".join(blocks)
            + f"\n\ntime: {stages}\n{size}\n"
            f"summary: {summary['summary_path']}\n"
            f"MLflow experiment {cfg.experiment!r}, "
            f"parent run {summary['mlflow']['parent_run_id']}."
            f"\nOpen the UI:\n  {ui}\nComparison report (HTML + figures):\n"
            "  python -m mixray.report "
            f"--experiment {cfg.experiment} --tracking-uri {store}\n")


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
    from mixray.generate.stage import GenerationFailed

    start = time.perf_counter()
    try:
        # RAY_ADDRESS (set by `ray job submit`) makes this join that cluster; else a local one.
        with runtime.connected():
            if args.upstream_only:
                timings: dict[str, float] = {}
                print(format_stages(prepare(cfg, timings)[1].stages))
                print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
                return 0
            summary = run_sweep(cfg, resume=args.resume)
    except ValueError as e:  # a mistake found once Ray is up: resources, --resume, empty pools
        print(f"error: {e}", file=sys.stderr)
        return 2
    except GenerationFailed as e:  # too many failed rows: kept uncommitted, a rerun retries them
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m mixray.sweep {args.sweep} --resume",
              file=sys.stderr)
        return 130
    print(format_summary(cfg, summary))
    print(f"sweep {summary['status']} in {time.perf_counter() - start:.0f} s")
    return 0 if summary["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
