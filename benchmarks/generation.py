"""Generation throughput: the Ray Data stage against the same HF engine called directly.

Both arms answer the same problems (reasoning-gym sums in the paper's prompt, the long style's
system turn), greedy, in the same batches of ``--batch`` rows (32 or more), with the same number
of torch threads:

``direct``  `HFEngine.load` in this process, then `generate` batch by batch. tokens/s =
            generated tokens / the `generate` calls' wall time (loading excluded: a warm engine).
``stage``   `run_generation`: a Ray Data ActorPoolStrategy pool of one engine actor reserving
            ``--threads`` CPUs, writing Parquet parts. tokens/s = generated tokens / the stage's
            wall time, which includes starting the actor and loading the model in it: the whole
            price of going through Ray, against a warm direct engine.

The arms run one after the other, never competing for cores, in the order direct, stage, direct;
the ratio is stage / the mean of the two direct runs (the machine may be shared: the spread of
the direct runs says how much). A probe run of the stage on one problem and one token, just
before, measures its fixed cost (actor start, model load, pipeline start); the steady-state
ratio leaves that out. Being first, the probe also pays Ray's cold first worker start, so it
overstates the main run's fixed cost and the steady-state ratio is an upper bound. Greedy decoding
on the same batches gives the same texts, which is checked. Writes
benchmarks/results/generation.json; needs a Ray-free machine (2 CPUs here):

    flock /tmp/mixray-ray.lock .venv/bin/python -m benchmarks.generation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mixray import logs
from mixray.generate.config import PAPER_PROMPT, SamplingConfig
from mixray.generate.job import GenerationJob, Placement, messages
from mixray.generate.stage import STYLE_SYSTEM, run_generation
from mixray.problems.config import ProblemsConfig, ReasoningGymSource

log = logging.getLogger("mixray.benchmarks.generation")
OUT = Path(__file__).parent / "results" / "generation.json"


def direct(job: GenerationJob, problems: pa.Table) -> dict:
    from mixray.generate.engine import row_seed
    from mixray.generate.hf import HFEngine

    start = time.perf_counter()
    engine = HFEngine.load(job.model_path, job.placement.torch_threads)
    load_s = time.perf_counter() - start
    rows = problems.to_pylist()
    texts, tokens, gen_s = [], 0, 0.0
    for i in range(0, len(rows), job.batch_size):
        batch = rows[i:i + job.batch_size]
        prompts = [messages(job.system, job.prompt, r["problem"]) for r in batch]
        seeds = [row_seed(job.sampling.seed, r["problem_id"], 0) for r in batch]
        start = time.perf_counter()
        out = engine.generate(prompts, job.sampling, seeds)
        gen_s += time.perf_counter() - start
        texts += [c.text for c in out]
        tokens += sum(c.n_tokens for c in out)
    return {"load_s": round(load_s, 2), "generate_s": round(gen_s, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / gen_s, 2), "texts": texts}


def stage(job: GenerationJob, problems_path: Path, out_dir: Path) -> dict:
    start = time.perf_counter()
    stats = run_generation(job, problems_path, out_dir)
    wall = time.perf_counter() - start
    table = pq.read_table(out_dir).sort_by("problem_id")
    texts = dict(zip(table["problem_id"].to_pylist(), table["completion"].to_pylist(),
                     strict=True))
    return {"wall_s": round(wall, 2), "tokens": stats["tokens"], "errors": stats["errors"],
            "tokens_per_s": round(stats["tokens"] / wall, 2), "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both arms")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.batch < 32:
        parser.error("--batch must be 32 or more")
    logs.configure()

    import ray
    import torch
    import transformers

    from mixray import runtime
    from mixray.models import resolve
    from mixray.problems.stage import build_problems

    work = Path(tempfile.mkdtemp(prefix="mixray-bench-gen-"))
    cfg = ProblemsConfig(train_size=args.problems, eval_size=1, source=ReasoningGymSource(
        task_args={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}))
    problems_dir, _ = build_problems(cfg, work)
    problems_path = problems_dir.path / "train.parquet"
    problems = pq.read_table(problems_path)
    job = GenerationJob(
        label="bench", model_path=str(resolve(args.model)), prompt=PAPER_PROMPT,
        system=STYLE_SYSTEM["long"],
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0),
        batch_size=args.batch, replicas=1,
        placement=Placement(cpus_per_engine=args.threads, torch_threads=args.threads))

    log.info("direct engine, first run")
    first = direct(job, problems)
    runtime.connect(num_cpus=os.cpu_count(), include_dashboard=False)
    try:
        log.info("Ray Data stage: fixed-cost probe (1 problem, 1 token)")
        probe_path = work / "probe.parquet"
        pq.write_table(problems.slice(0, 1), probe_path)
        probe_job = dataclasses.replace(job, sampling=SamplingConfig(max_new_tokens=1))
        probe = stage(probe_job, probe_path, work / "probe")
        log.info("Ray Data stage")
        ray_arm = stage(job, problems_path, work / "stage")
    finally:
        ray.shutdown()
    log.info("direct engine, second run")
    second = direct(job, problems)
    shutil.rmtree(work)

    direct_tps = (first["tokens_per_s"] + second["tokens_per_s"]) / 2
    ids = problems["problem_id"].to_pylist()
    identical = sum(ray_arm["texts"][pid] == text for pid, text in zip(ids, first["texts"],
                                                                         strict=True))
    report = {
        "model": args.model,
        "problems": args.problems,
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": args.threads,
        "greedy": True,
        "direct": [{k: v for k, v in r.items() if k != "texts"} for r in (first, second)],
        "stage": {k: v for k, v in ray_arm.items() if k != "texts"},
        "direct_tokens_per_s_mean": round(direct_tps, 2),
        "ratio_stage_over_direct_tokens_per_s": round(ray_arm["tokens_per_s"] / direct_tps, 3),
        "stage_fixed_cost_s": probe["wall_s"],
        "ratio_steady_state": round(
            ray_arm["tokens"] / (ray_arm["wall_s"] - probe["wall_s"]) / direct_tps, 3),
        "identical_texts": f"{identical}/{len(ids)}",
        "stage_includes": "actor start and model load in the actor (direct: warm engine)",
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
        "versions": {"ray": ray.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s: stage / direct = %.3f", args.out,
             report["ratio_stage_over_direct_tokens_per_s"])


if __name__ == "__main__":
    main()
