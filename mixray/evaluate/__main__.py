"""`python -m mixray.evaluate --model SPEC --benchmarks B [B ...]` — evaluate any model.

Any checkpoint folder, packaged model or hub id, on any benchmarks (the paper's, local files,
reasoning-gym sets), so a student can be baselined before it is fine-tuned. Arguments and
benchmarks are checked before Ray starts (a mistake exits 2 with a message); then one pass of the
generation stage, scoring, an MLflow run, and a summary table. Like `mixray.sweep`, this entry
point calls `ray.init` itself: a new local cluster, or the one ``RAY_ADDRESS`` (or
``--ray-address``) names.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mixray import logs, models
from mixray.evaluate.config import EvaluateConfig
from mixray.store import default_tracking_uri, sqlite_path
from mixray.train.config import TrainConfig

log = logging.getLogger("mixray")

BENCHMARK_HELP = """\
benchmarks (each B is one of):
  math500 | math | gsm8k | amc2023 | aime2024 | olympiadbench
                        the paper's benchmarks, from the Hugging Face hub (needs `datasets`)
  NAME=PATH             a registry benchmark from a local jsonl/json/parquet copy with the
                        hub's columns (e.g. gsm8k=/data/gsm8k_test.parquet); any other NAME: a
                        local file with columns problem and answer
  heldout=PATH          a sweep's held-out problems (runs/artifacts/problems/<key>/eval.parquet)
  rg:TASK[:SIZE]        an offline reasoning-gym set (seeded away from training seeds)
  hf:OWNER/NAME[@REV]   any hub dataset with columns problem and answer (split test), at a
                        revision if given; hub datasets are read once into runs/datasets
  PATH.jsonl            a local file with columns problem and answer
  '{kind: dataset, name: mine, path: x.jsonl, fields: {problem: q, answer: a}, ...}'
                        a full spec as YAML (see mixray/evaluate/benchmarks.py)

example:
  python -m mixray.evaluate --model smollm2-135m-instruct --benchmarks rg:basic_arithmetic:20 \\
      gsm8k=/data/gsm8k_test.jsonl --n 4 --temperature 0.6 --max-new-tokens 256
"""


def build_parser() -> argparse.ArgumentParser:
    defaults = EvaluateConfig.model_fields
    sampling = defaults["sampling"].default
    p = argparse.ArgumentParser(
        prog="python -m mixray.evaluate",
        description="Evaluate any model (a checkpoint folder, a packaged model, a hub id) on "
        "benchmarks, with the generation stage's engines; results go to a folder and MLflow.",
        epilog=BENCHMARK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model spec: 'tiny-random', 'smollm2-135m-instruct', a local "
                   "Hugging Face folder, or a hub id; left out with an http --engine, whose "
                   "model names the served one")
    p.add_argument("--benchmarks", required=True, nargs="+", metavar="B",
                   help="what to evaluate on (see below)")
    p.add_argument("--n", type=int, default=sampling.n, dest="n_samples",
                   help="samples per problem (default %(default)s; more needs --temperature)")
    p.add_argument("--temperature", type=float, default=sampling.temperature,
                   help="0 is greedy (default %(default)s)")
    p.add_argument("--top-p", type=float, default=sampling.top_p)
    p.add_argument("--seed", type=int, default=sampling.seed)
    p.add_argument("--max-new-tokens", type=int, default=sampling.max_new_tokens,
                   help="per completion (default %(default)s; the paper allowed 16000)")
    p.add_argument("--ks", type=int, nargs="+", help="k of pass@k and maj@k "
                   "(default: 1, powers of 2 and n)")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark "
                   "(registry sizes are still checked)")
    p.add_argument("--prompt", default=defaults["prompt"].default,
                   help="user-turn template with {problem} (default: the paper's)")
    p.add_argument("--system-prompt", default=TrainConfig.model_fields["system_prompt"].default,
                   help="system turn (default: %(default)r, what students are trained with)")
    p.add_argument("--engine", default="hf", metavar="ENGINE", help="hf (default) | vllm | a "
                   "YAML mapping, e.g. '{kind: vllm, tensor_parallel_size: 2}', or a served model: "
                   "'{kind: http, base_url: http://HOST:8000/v1, model: NAME}' (then no --model)")
    p.add_argument("--gpus-per-replica", type=float, help="GPUs per engine replica (default: 0 "
                   "for hf, tensor_parallel_size for vllm)")
    p.add_argument("--judge", metavar="MODEL", help="re-judge answers math-verify rejects "
                   "with this model (True/False)")
    p.add_argument("--judge-engine", metavar="ENGINE", help="the judge's engine: hf (default) | "
                   "vllm | '{kind: http, base_url: http://HOST:8000/v1, model: NAME}' (then no "
                   "--judge)")
    p.add_argument("--exclude-problems", type=Path, metavar="PATH", help="training problems "
                   "(parquet/jsonl with a 'problem' column) that rg: sets must not contain")
    p.add_argument("--out", type=Path, help="output folder (default: runs/evals/<model>-<time>)")
    p.add_argument("--tracking-uri", help=f"MLflow store (default: {default_tracking_uri()})")
    p.add_argument("--experiment", default="evaluate", help="MLflow experiment (default "
                   "%(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"].default)
    p.add_argument("--replicas", type=int, default=defaults["replicas"].default,
                   help="engine actors (default %(default)s)")
    p.add_argument("--max-error-rate", type=float, default=defaults["max_error_rate"].default,
                   help="largest share of samples the engine may fail on; above it the "
                   "evaluation exits 1 and a rerun with the same --out retries only those "
                   "(default %(default)s)")
    p.add_argument("--threads-per-engine", type=int,
                   help="torch threads (and CPUs reserved) per engine (default: CPUs / replicas)")
    p.add_argument("--samples-to-log", type=int, default=defaults["samples_to_log"].default,
                   help="problems per benchmark in the sample-completions table")
    p.add_argument("--ray-address", help="Ray cluster to use ('local': always a new one; "
                   "default: RAY_ADDRESS, else a new local cluster)")
    return p


def _benchmark_arg(text: str) -> Any:
    """A YAML mapping (a full spec) or a shorthand string, left to EvaluateConfig to validate."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, dict) else text


def _engine_arg(text: str) -> Any:
    """'hf', 'vllm' or a YAML mapping -> what EngineConfig validates."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, dict) else {"kind": text}


def _limited(spec: Any, limit: int) -> Any:
    if hasattr(spec, "limit"):
        return spec.model_copy(update={"limit": limit})
    if hasattr(spec, "size"):  # a reasoning-gym set: fewer problems generated
        return spec.model_copy(update={"size": min(spec.size, limit)})
    return spec


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    """The EvaluateConfig the arguments describe (a pydantic ValidationError if they are wrong)."""
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    data = {
        "benchmarks": [_benchmark_arg(b) for b in args.benchmarks],
        "prompt": args.prompt,
        "sampling": {"n": args.n_samples, "temperature": args.temperature, "top_p": args.top_p,
                     "seed": args.seed, "max_new_tokens": args.max_new_tokens},
        "ks": args.ks, "samples_to_log": args.samples_to_log,
        "batch_size": args.batch_size, "replicas": args.replicas,
        "engine": _engine_arg(args.engine), "gpus_per_replica": args.gpus_per_replica,
        "max_error_rate": args.max_error_rate,
    }
    if args.judge or args.judge_engine:
        data["judge"] = {"model": args.judge} | (
            {"engine": _engine_arg(args.judge_engine)} if args.judge_engine else {})
    cfg = EvaluateConfig.model_validate(data)
    if args.limit is not None:
        cfg = cfg.model_copy(update={"benchmarks": [_limited(b, args.limit)
                                                    for b in cfg.benchmarks]})
    return cfg


def model_name(args: argparse.Namespace, cfg: EvaluateConfig) -> str:
    """What is evaluated: --model, or the served model's name for an http engine."""
    if cfg.engine.kind == "http":
        if args.model is not None:
            raise ValueError("--engine is http: the model is the engine's 'model' (the served "
                             f"name, {cfg.engine.model!r}); leave --model out")
        return cfg.engine.model
    if args.model is None:
        raise ValueError("--model is required (unless --engine is an http endpoint)")
    return args.model


def _validation_message(err: ValidationError) -> str:
    lines = [f"{err.error_count()} problem(s) with the arguments:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(arguments)"
        lines.append(f"  - {where}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def format_summary(report: dict[str, Any]) -> str:
    """A short table: one line per benchmark, then the unweighted average (the paper's P)."""
    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    n = report["n_samples"]
    head = ("benchmark", "problems", "accuracy ± se", f"pass@{n}", f"maj@{n}", "tokens",
            "truncated", "no answer", "failed", "bad rows")
    rows = [head]
    for name, m in report["benchmarks"].items():
        rows.append((name, str(m["n_problems"]),
                     f"{m['accuracy']:.3f} ± {m['accuracy_stderr']:.3f}",
                     f"{m.get(f'pass@{n}', float('nan')):.3f}",
                     f"{m.get(f'maj@{n}', float('nan')):.3f}",
                     f"{m['response_tokens_mean']:.0f}", pct(m["truncation_rate"]),
                     pct(m["no_answer_rate"]), pct(m["error_rate"]), str(m["bad_rows"])))
    avg = report["average"]
    rows.append((f"P (mean of {avg['n_benchmarks']})", "",
                 f"{avg['accuracy']:.3f} ± {avg['accuracy_stderr']:.3f}", "", "",
                 f"{avg['response_tokens_mean']:.0f}", pct(avg["truncation_rate"]),
                 pct(avg["no_answer_rate"]), pct(avg["error_rate"]), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on unknown or malformed arguments
    logs.configure()
    try:
        cfg = config_from_args(args)
        name = model_name(args, cfg)
    except ValidationError as e:
        print(f"error: {_validation_message(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from mixray.evaluate.stage import load_benchmarks, run_evaluation
    from mixray.generate.job import Placement
    from mixray.generate.stage import GenerationFailed
    from mixray.problems.datasets import HUB_CACHE_DIR

    # Everything that can be checked without Ray is checked now: the data first (cheap), then
    # the model and the judge, which may be built or converted on first use (seconds to minutes).
    try:
        if args.exclude_problems is not None and not args.exclude_problems.is_file():
            raise ValueError(f"--exclude-problems {args.exclude_problems}: no such file")
        # Hub benchmarks are read once into the default run root's cache (runs/datasets, where
        # the default MLflow store lies too): later evaluations and laptop sweeps reuse the copy.
        benchmarks = load_benchmarks(cfg, None, args.exclude_problems,
                                     cache=Path("runs").resolve() / HUB_CACHE_DIR)
        model_dir = None if cfg.engine.kind == "http" else models.resolve(name)
        judge_dir = models.resolve(cfg.judge.model) if cfg.judge and cfg.judge.model else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for b in benchmarks:
        bad = f", {len(b.bad_rows)} unusable record(s) set aside" if b.bad_rows else ""
        print(f"benchmark {b.name}: {len(b.rows)} problems from {b.source}{bad}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (args.out or Path("runs") / "evals" / f"{Path(name).name}-{stamp}").resolve()
    tracking_uri = args.tracking_uri or default_tracking_uri(Path("runs").resolve())
    if (db := sqlite_path(tracking_uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)

    import ray

    from mixray import runtime

    start = time.perf_counter()
    runtime.connect(args.ray_address)
    try:
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        threads = args.threads_per_engine or max(1, (os.cpu_count() or 1) // cfg.replicas)
        # Reserve what the engine's threads use, but never more than the cluster can place.
        placement = Placement(cpus_per_engine=min(float(threads), cluster_cpus / cfg.replicas),
                              torch_threads=threads)
        # The generations' cache lies under --out too: a rerun with it resumes them.
        metrics = run_evaluation(model_dir, benchmarks, cfg, args.system_prompt, out, root=out,
                                 judge_model_dir=judge_dir, placement=placement)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except GenerationFailed as e:  # not scored: failures would count as wrong answers
        print(f"error: {e}\nrerun with --out {out} to retry the failed samples only "
              "(--max-error-rate to accept more)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun with --out {out} to continue where it stopped",
              file=sys.stderr)
        return 130
    finally:
        ray.shutdown()

    import json

    from mixray.tracking import Target, log_evaluation

    report = json.loads((out / "metrics.json").read_text())
    params = {"model": name,
              "model_path": str(model_dir) if model_dir else cfg.engine.base_url,
              "benchmarks": [b.model_dump() for b in cfg.benchmarks],
              "n_samples": cfg.sampling.n, "temperature": cfg.sampling.temperature,
              "top_p": cfg.sampling.top_p, "seed": cfg.sampling.seed,
              "max_new_tokens": cfg.sampling.max_new_tokens, "prompt": cfg.prompt,
              "system_prompt": args.system_prompt, "verifier": report["verifier"],
              "engine": cfg.engine.model_dump(),
              "judge": cfg.judge.model_dump() if cfg.judge else "none", "out_dir": str(out)}
    run_id = log_evaluation(Target(tracking_uri, args.experiment), f"{Path(name).name}-eval",
                            params, metrics, out)
    print()
    print(format_summary(report | {"n_samples": cfg.sampling.n}))
    print(f"\n{sum(len(b.rows) for b in benchmarks)} problems x {cfg.sampling.n} sample(s) in "
          f"{time.perf_counter() - start:.0f} s; per-sample rows: {out / 'samples.parquet'}")
    print(f"MLflow: experiment {args.experiment!r}, run {run_id} ({tracking_uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
