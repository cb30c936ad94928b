"""`python -m mixray.sweep [SWEEP.yaml] [--set a.b=v ...] [--dry-run]` — the one entry point.

Validates the sweep file (exit 2 with a readable message on any mistake, before any work), then:
models -> problems -> per-teacher generation and curation (cached, shared by all trials) ->
MLflow parent run -> Ray Tune trials (mix -> train -> evaluate) -> a summary table.
Ray is started or joined through `mixray.runtime`, as everywhere. The sweep itself is
`mixray.sweep.run`'s; the plan printed first, `mixray.sweep.plan`'s; the console,
`mixray.sweep.console`'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mixray import cluster, logs, runtime
from mixray.config import SweepConfig, load_sweep
from mixray.sweep import console
from mixray.sweep.plan import check_resources, memory_plan, plan
from mixray.sweep.preflight import check_inputs
from mixray.sweep.run import prepare, run_sweep
from mixray.sweep.summary import format_summary
from mixray.sweep.upstream import format_stages

DEFAULT_SWEEP = Path(__file__).resolve().parents[2] / "sweeps" / "laptop.yaml"


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
                stages = format_stages(prepare(cfg, timings)[1].teachers)
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


def check_cluster_file(cfg: SweepConfig, path: Path) -> None:
    """What `plan.check_resources` refuses once Ray is up, asked of the cluster file instead:
    the most its node types may start (`cluster.launcher_maximum`)."""
    if not path.is_file():
        raise ValueError(f"--cluster {path}: no such file")
    most = cluster.launcher_maximum(path)
    if not most:
        raise ValueError(f"--cluster {path}: declares no node types (expected a cluster "
                         "launcher YAML's available_node_types or a KubeRay cluster spec)")
    check_resources(cfg, most, where=str(path))


def output_log(cfg: SweepConfig) -> Path:
    """Where a quiet console sends Ray's, Tune's, DeepSpeed's and the workers' output."""
    return cfg.root.log(cfg.name, time.strftime("%Y%m%d-%H%M%S"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixray.sweep",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sweep", nargs="?", default=str(DEFAULT_SWEEP), help="sweep YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override any key of the sweep file (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the plan, exit")
    parser.add_argument("--cluster", type=Path, metavar="YAML",
                        help="the cluster file the sweep is meant for (clusters/aws.yaml, "
                        "gcp.yaml, kuberay.yaml): every trial and engine replica must fit what "
                        "its node types may start, and every resources.node_types entry must be "
                        "one of them; checked before Ray starts, with --dry-run too")
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
        check_inputs(cfg)  # what the real run would refuse minutes later, before Ray starts
        gpu_gib, where = {}, "no GPU memory known: --cluster FILE gives it"
        if args.cluster is not None:
            check_cluster_file(cfg, args.cluster)
            gpu_gib = cluster.gpu_memory(cluster.file_groups(args.cluster))
            where = str(args.cluster)
        print(plan(cfg))
        print(memory_plan(cfg, gpu_gib, where))
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
