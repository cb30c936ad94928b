"""`python -m mixray.sweep [SWEEP.yaml] [--set a.b=v ...] [--dry-run]` — the one entry point.

Validates the sweep file (exit 2 with a readable message on any mistake, before any work), then:
models -> problems -> per-teacher generation and curation (cached, shared by all trials) ->
MLflow parent run -> Ray Tune trials (mix -> train -> evaluate) -> a summary table.
This is the only place that calls `ray.init` (tests use a session fixture instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from mixray import logs, models
from mixray.config import SweepConfig, SweepFileError, load_sweep, trial_name

log = logging.getLogger("mixray")
DEFAULT_SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "laptop.yaml"


def worker_env() -> dict[str, str]:
    """Environment every Ray worker gets: a persistent home for DeepSpeed's compiled C++ ops
    (about 50 s to build the shared-memory op, paid once instead of on every run) and our cache."""
    cache = models.cache_dir()
    return {
        "MIXRAY_CACHE": str(cache),
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions")),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def plan(cfg: SweepConfig) -> str:
    t = cfg.train
    lines = [
        f"sweep {cfg.name!r}: run root {cfg.run_root_path}, MLflow {cfg.tracking_uri} "
        f"(experiment {cfg.experiment!r})",
        f"problems : {cfg.problems.train_size} train + {cfg.problems.eval_size} held-out from "
        f"reasoning-gym {cfg.problems.task!r} (seed {cfg.problems.seed})",
    ]
    for label, teacher in cfg.teachers.items():
        s = teacher.sampling
        lines.append(
            f"teacher  : {label!r} = {teacher.model} ({teacher.style} CoT, max {s.max_new_tokens} "
            f"tokens, T={s.temperature}, {teacher.replicas} replica(s))"
        )
    lines += [
        f"curate   : {cfg.curate.verifier}, pools keep {cfg.curate.keep} responses",
        f"trials   : {len(cfg.trials())} = students {cfg.students} x long_share "
        f"{cfg.search.long_share} (pools {cfg.mix.long_pool!r}/{cfg.mix.short_pool!r})",
        f"train    : Ray Train + DeepSpeed ZeRO-{t.zero_stage}, {t.dtype}, {t.num_workers} workers, "
        f"{f'{t.epochs:g} epochs' if t.epochs else f'{t.max_steps} steps'} x global batch "
        f"{t.global_batch}, lr {t.lr:g} ({t.lr_schedule}), packing {t.packing}",
        f"evaluate : {cfg.problems.eval_size} held-out problems, greedy, max "
        f"{cfg.evaluate.max_new_tokens} tokens",
        f"resources: {cfg.cpus_per_trial():g} CPU per trial, {cfg.resources.cpus_per_engine:g} "
        f"per generation actor",
    ]
    return "\n".join(lines)


def check_resources(cfg: SweepConfig, cluster_cpus: float) -> None:
    """Fail before any work when one trial or one generation actor can never be placed."""
    for what, need in (("one trial (train.num_workers x resources.cpus_per_train_worker + a little)",
                        cfg.cpus_per_trial()),
                       ("one generation actor (resources.cpus_per_engine)",
                        cfg.resources.cpus_per_engine)):
        if need > cluster_cpus:
            raise ValueError(f"{what} needs {need:g} CPUs but the Ray cluster has {cluster_cpus:g}")


@dataclass
class Invocation:
    """One run of a sweep: its id, its MLflow parent and its status, kept in state.json so that
    `--resume` can find an interrupted run and continue it under the same parent."""

    dir: Path
    resume_key: str
    parent_run_id: str | None = None
    status: str = "running"  # running | finished | failed | interrupted

    @property
    def id(self) -> str:
        return self.dir.name

    @classmethod
    def new(cls, cfg: SweepConfig) -> Invocation:
        invocation_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        return cls(cfg.run_root_path / "sweeps" / cfg.name / invocation_id, cfg.resume_key())

    @classmethod
    def latest_unfinished(cls, cfg: SweepConfig) -> Invocation:
        states = sorted((cfg.run_root_path / "sweeps" / cfg.name).glob("*/state.json"))
        for path in reversed(states):
            state = json.loads(path.read_text())
            if state["status"] == "finished":
                continue
            if state["resume_key"] != cfg.resume_key():
                raise ValueError(
                    f"--resume: the interrupted run {path.parent.name} of sweep {cfg.name!r} used a "
                    "different configuration (only search and resources may change); "
                    "run without --resume to start a new sweep")
            return cls(path.parent, state["resume_key"], state["parent_run_id"], state["status"])
        raise ValueError(f"--resume: sweep {cfg.name!r} has no interrupted run under "
                         f"{cfg.run_root_path / 'sweeps' / cfg.name}")

    def save(self, status: str) -> None:
        self.status = status
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"resume_key": self.resume_key, "parent_run_id": self.parent_run_id,
                 "status": status}
        (self.dir / "state.json").write_text(json.dumps(state, indent=2))


def run_upstream(cfg: SweepConfig, timings: dict[str, float]) -> dict[str, Any]:
    """Models, problems, and per-teacher generation and curation — each cached by its key."""
    from mixray.curate.stage import curate
    from mixray.generate.stage import generate_teacher
    from mixray.problems import build_problems

    t0 = time.perf_counter()
    specs = {*cfg.students, *(t.model for t in cfg.teachers.values())}
    paths = {spec: models.resolve(spec) for spec in sorted(specs)}
    timings["models"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems, cached = build_problems(cfg.problems, cfg.run_root_path)
    timings["problems"] = time.perf_counter() - t0
    up: dict[str, Any] = {"paths": paths, "problems": problems, "pools": {}, "curate": {},
                          "stages": {"problems": {"path": str(problems.path), "cached": cached}}}
    placement = {"cpus_per_engine": cfg.resources.cpus_per_engine,
                 "torch_threads": cfg.resources.torch_threads}
    for label, teacher in cfg.teachers.items():
        t0 = time.perf_counter()
        gen, gen_stats = generate_teacher(label, teacher, paths[teacher.model], problems,
                                          cfg.run_root_path, **placement)
        cur, stats, cur_cached = curate(gen, cfg.curate, cfg.run_root_path)
        timings[f"generate+curate.{label}"] = time.perf_counter() - t0
        up["pools"][label], up["curate"][label] = str(cur.path / "pool.parquet"), stats
        up["stages"][f"generate.{label}"] = {"path": str(gen.path), "cached": gen_stats is None,
                                             "stats": gen_stats}
        up["stages"][f"curate.{label}"] = {"path": str(cur.path), "cached": cur_cached,
                                           "stats": stats}
    return up


def _trial_rows(cfg: SweepConfig, grid, done: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One summary row per trial of the grid: finished before (resumed), run now, or missing."""
    from mixray.tracking import SUMMARY_METRICS

    ran = {trial_name(r.config["trial"]): r for r in grid or []}
    rows = []
    for trial in cfg.trials():
        name = trial_name(trial)
        row: dict[str, Any] = {"trial": name, **trial, "resumed": name in done, "error": None}
        if name in done:
            row |= done[name]
        elif name in ran:
            r = ran[name]
            row |= {k: (r.metrics or {}).get(k) for k in SUMMARY_METRICS}
            row["error"] = (str(r.error) if r.error else
                            None if row["eval_accuracy"] is not None else "did not finish")
        else:
            row |= dict.fromkeys(SUMMARY_METRICS) | {"error": "did not run"}
        rows.append(row)
    return rows


def run_sweep(cfg: SweepConfig, resume: bool = False) -> dict[str, Any]:
    """Run a validated sweep on the connected Ray cluster; return the summary (also on disk).

    With ``resume``, continue the latest interrupted invocation: same MLflow parent, and only
    the trials that have not finished run again.
    """
    import ray

    from mixray import tracking
    from mixray.tune import SweepContext, run_tune

    assert ray.is_initialized(), "connect to Ray first (the CLI or a test fixture does)"
    # Resolve the run root here, once: trial processes run in other working directories.
    cfg = cfg.model_copy(update={"run_root": str(cfg.run_root_path)})
    check_resources(cfg, ray.cluster_resources().get("CPU", 0.0))
    inv = Invocation.latest_unfinished(cfg) if resume else Invocation.new(cfg)
    inv.save("running")
    timings: dict[str, float] = {}
    up = run_upstream(cfg, timings)

    done: dict[str, dict[str, float]] = {}
    if inv.parent_run_id:
        done = tracking.reopen_parent(cfg, inv.parent_run_id)
    else:
        inv.parent_run_id = tracking.start_parent(cfg, {"curate": up["curate"],
                                                        "stages": up["stages"]})
        inv.save("running")
    todo = [t for t in cfg.trials() if trial_name(t) not in done]
    log.info("trials: %d to run, %d finished before", len(todo), len(done))
    ctx = SweepContext(cfg=cfg, invocation=inv.id, pools=up["pools"],
                       eval_problems=str(up["problems"].path / "eval.parquet"),
                       student_paths={s: str(up["paths"][s]) for s in cfg.students},
                       parent_run_id=inv.parent_run_id)
    t0 = time.perf_counter()
    status = "interrupted"
    try:
        grid = run_tune(ctx, todo) if todo else None
        trials = _trial_rows(cfg, grid, done)
        status = "finished" if all(t["error"] is None for t in trials) else "failed"
    finally:
        timings["trials"] = time.perf_counter() - t0
        inv.save(status)
        tracking.end_parent(cfg, inv.parent_run_id, {"finished": "FINISHED", "failed": "FAILED",
                                                     "interrupted": "KILLED"}[status])
    summary = {"invocation": inv.id, "status": status, "stages": up["stages"], "trials": trials,
               "timings_s": timings,
               "mlflow": {"tracking_uri": cfg.tracking_uri, "experiment": cfg.experiment,
                          "parent_run_id": inv.parent_run_id}}
    (inv.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_path"] = str(inv.dir / "summary.json")
    return summary


def format_summary(cfg: SweepConfig, summary: dict[str, Any]) -> str:
    rows = [("trial", "long share", "mix rows", "train loss", "eval acc ± se", "status")]
    for t in sorted(summary["trials"], key=lambda t: (t["student"], t["long_share"])):
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        rows.append((t["trial"], f"{t['long_share']:g}", fmt(t["mix_rows"], "d"),
                     fmt(t["train_loss"], ".4f"),
                     fmt(t["eval_accuracy"], ".3f") + " ± " + fmt(t["eval_accuracy_stderr"], ".3f"),
                     "FAILED" if t["error"] else "resumed" if t["resumed"] else "ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings_s"].items())
    store = cfg.tracking_uri
    ui = (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri {store} "
          f"--workers 1 --host 127.0.0.1 --port 5000   # then open http://127.0.0.1:5000")
    return (f"\n{table}\n\ntime: {stages}\nsummary: {summary['summary_path']}\n"
            f"MLflow experiment {cfg.experiment!r}, parent run {summary['mlflow']['parent_run_id']}."
            f"\nOpen the UI:\n  {ui}\nComparison report (HTML + figures):\n  python -m mixray.report "
            f"--experiment {cfg.experiment} --tracking-uri {store}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixray.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", nargs="?", default=str(DEFAULT_SWEEP), help="sweep YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override any key of the sweep file (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan, exit")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest interrupted run of this sweep: same MLflow "
                        "parent, finished trials are not rerun")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        cfg = load_sweep(args.sweep, args.set)
    except SweepFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(plan(cfg))
    if args.dry_run:
        return 0
    import ray

    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    start = time.perf_counter()
    # RAY_ADDRESS (set by `ray job submit`) makes this connect to the cluster; else a local one.
    ray.init(runtime_env={"env_vars": worker_env()}, log_to_driver=True)
    try:
        summary = run_sweep(cfg, resume=args.resume)
    except ValueError as e:  # a mistake found once Ray is up: resources, --resume, empty pools
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m mixray.sweep {args.sweep} --resume",
              file=sys.stderr)
        return 130
    finally:
        ray.shutdown()
    print(format_summary(cfg, summary))
    print(f"sweep {summary['status']} in {time.perf_counter() - start:.0f} s")
    return 0 if summary["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
