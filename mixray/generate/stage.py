"""The generation stage: problems Parquet -> Ray Data actor pool of engines -> completions Parquet.

Output columns: problem_id, problem, answer (gold, carried for curation), teacher, sample_idx,
prompt (the user turn), completion, n_tokens, finish_reason.

A teacher's output is keyed by what determines its bytes (problems, model, prompt, style,
sampling); replicas, batch size and CPUs are placement and stay out of the key.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray

from mixray.artifacts import StageDir
from mixray.config import SamplingConfig, TeacherConfig

log = logging.getLogger(__name__)

# What each prompt style asks of the teacher, as its system turn.
STYLE_SYSTEM = {
    "long": "You are a careful mathematician. Think step by step: explain and check every step "
    "in detail before giving the final answer.",
    "short": "You are a concise solver. Give only the essential step, then the final answer.",
}
ENGINE_VERSION = "hf-1"  # bump when the engine's output for the same inputs changes


@dataclass(frozen=True)
class GenerationJob:
    """Everything one pass of the stage needs; placement fields last."""

    label: str
    model_path: str
    prompt: str
    system: str | None
    sampling: SamplingConfig
    batch_size: int = 8
    replicas: int = 1
    cpus_per_engine: float = 0.5
    torch_threads: int = 1


def messages(system: str | None, prompt: str, problem: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": prompt.format(problem=problem)}]


class _EngineActor:
    """One Ray Data actor: loads the engine once, then turns batches of problems into completions."""

    def __init__(self, job: GenerationJob) -> None:
        from mixray.generate.hf import HFEngine

        self.job = job
        self.engine = HFEngine.load(job.model_path, job.torch_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        job = self.job
        prompts = [messages(job.system, job.prompt, str(p)) for p in batch["problem"]]
        outs = self.engine.generate(prompts, job.sampling)
        n = len(outs)
        return {
            "problem_id": batch["problem_id"],
            "problem": batch["problem"],
            "answer": batch["answer"],
            "teacher": np.array([job.label] * n),
            "sample_idx": np.zeros(n, dtype=np.int32),
            "prompt": np.array([p[-1]["content"] for p in prompts]),
            "completion": np.array([o.text for o in outs]),
            "n_tokens": np.array([o.n_tokens for o in outs], dtype=np.int64),
            "finish_reason": np.array([o.finish_reason for o in outs]),
        }


def run_generation(job: GenerationJob, problems_path: Path, out_dir: Path) -> dict[str, float]:
    """Generate one completion per problem into ``out_dir`` (Parquet parts); return throughput."""
    start = time.perf_counter()
    ds = ray.data.read_parquet(str(problems_path), override_num_blocks=max(2, job.replicas))
    ds = ds.map_batches(
        _EngineActor,
        fn_constructor_kwargs={"job": job},
        compute=ray.data.ActorPoolStrategy(size=job.replicas),
        batch_size=job.batch_size,
        num_cpus=job.cpus_per_engine,
    )
    ds.write_parquet(str(out_dir))
    seconds = time.perf_counter() - start
    table = pq.read_table(out_dir)
    tokens = int(np.sum(table["n_tokens"].to_numpy()))
    stats = {"rows": table.num_rows, "tokens": tokens, "seconds": round(seconds, 1),
             "tokens_per_s": round(tokens / seconds, 1)}
    log.info("generate[%s]: %d rows, %d tokens in %.0f s (%.1f tok/s)", job.label,
             stats["rows"], tokens, seconds, stats["tokens_per_s"])
    return stats


def teacher_job(label: str, teacher: TeacherConfig, model_path: Path, **placement) -> GenerationJob:
    return GenerationJob(
        label=label,
        model_path=str(model_path),
        prompt=teacher.prompt,
        system=STYLE_SYSTEM[teacher.style],
        sampling=teacher.sampling,
        batch_size=teacher.batch_size,
        replicas=teacher.replicas,
        **placement,
    )


def teacher_stage(label: str, teacher: TeacherConfig, problems: StageDir, run_root: Path) -> StageDir:
    spec = {
        "engine": ENGINE_VERSION,
        "problems": problems.key,
        "label": label,
        "model": teacher.model,
        "prompt": teacher.prompt,
        "system": STYLE_SYSTEM[teacher.style],
        "sampling": teacher.sampling.model_dump(),
    }
    return StageDir(run_root, "generate", spec)


def generate_teacher(
    label: str, teacher: TeacherConfig, model_path: Path, problems: StageDir, run_root: Path,
    **placement,
) -> tuple[StageDir, dict[str, float] | None]:
    """Cached teacher generation; returns (where, stats or None when reused)."""
    stage = teacher_stage(label, teacher, problems, run_root)
    if stage.is_committed():
        log.info("generate[%s]: reusing %s", label, stage.path)
        return stage, None
    tmp = stage.staging()
    job = teacher_job(label, teacher, model_path, **placement)
    stats = run_generation(job, problems.path / "train.parquet", tmp / "data")
    stage.commit(tmp)
    return stage, stats
