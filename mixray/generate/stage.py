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
    """Generate one completion per problem into ``out_dir`` (Parquet parts); return throughput.

    Problems enter as in-memory blocks of one batch each and results come back to this process,
    which writes the parts: no Ray Data read or write tasks, which would each claim a whole CPU
    and, with two trials evaluating at once on 2 CPUs, starve the engine actors forever.
    """
    # Our per-part log lines (rows, tok/s, ETA) replace Ray Data's bars, which interleave
    # unreadably when two trials evaluate at once.
    ray.data.DataContext.get_current().enable_progress_bars = False
    problems = pq.read_table(problems_path)
    blocks = [problems.slice(i, job.batch_size) for i in range(0, problems.num_rows, job.batch_size)]
    ds = ray.data.from_arrow(blocks).map_batches(
        _EngineActor,
        fn_constructor_kwargs={"job": job},
        compute=ray.data.ActorPoolStrategy(size=job.replicas),
        batch_size=job.batch_size,
        num_cpus=job.cpus_per_engine,
        batch_format="numpy",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    start, rows, tokens = time.perf_counter(), 0, 0
    for i, part in enumerate(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
        pq.write_table(part, out_dir / f"part-{i:05d}.parquet")
        rows += part.num_rows
        tokens += int(np.sum(part["n_tokens"].to_numpy()))
        elapsed = time.perf_counter() - start
        eta = elapsed / rows * (problems.num_rows - rows)
        log.info("generate[%s]: %d/%d rows, %.1f tok/s, ETA %.0f s", job.label, rows,
                 problems.num_rows, tokens / elapsed, eta)
    seconds = time.perf_counter() - start
    assert rows == problems.num_rows, f"generated {rows} rows for {problems.num_rows} problems"
    stats = {"rows": rows, "tokens": tokens, "seconds": round(seconds, 1),
             "tokens_per_s": round(tokens / seconds, 1)}
    log.info("generate[%s]: done, %d rows, %d tokens in %.0f s (%.1f tok/s)", job.label, rows,
             tokens, seconds, stats["tokens_per_s"])
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
