"""The generation stage: problems Parquet -> Ray Data actor pool of engines -> completions Parquet.

Output columns: problem_id, problem, answer (gold, carried for curation), teacher, sample_idx,
prompt (the user turn), completion, n_tokens, finish_reason ("stop" | "length" | "error") and
error (the engine's message for a row it could not generate, else null).

A teacher's output is keyed by what determines its bytes (problems, model, prompt, style,
sampling); replicas, batch size and CPUs are placement and stay out of the key.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mixray.artifacts import StageDir
from mixray.config import SamplingConfig, TeacherConfig
from mixray.generate.engine import Completion

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
        outs, errors = self._generate(prompts)
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
            "error": np.array(errors, dtype=object),
        }

    def _generate(self, prompts: list) -> tuple[list[Completion], list[str | None]]:
        """The whole batch at once; if the engine fails on it, row by row, so one bad row
        becomes an error row (kept, counted, with its reason) instead of failing the job."""
        try:
            return self.engine.generate(prompts, self.job.sampling), [None] * len(prompts)
        except Exception as batch_error:  # noqa: BLE001 - retried row by row just below
            log.warning("generate[%s]: batch failed (%s); retrying row by row", self.job.label,
                        batch_error)
        outs, errors = [], []
        for prompt in prompts:
            try:
                outs.append(self.engine.generate([prompt], self.job.sampling)[0])
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - recorded in the row, counted by the caller
                outs.append(Completion(text="", n_tokens=0, finish_reason="error"))
                errors.append(f"{type(e).__name__}: {e}")
        return outs, errors


def _done_ids(out_dir: Path) -> set[str]:
    parts = sorted(out_dir.glob("part-*.parquet"))
    if not parts:
        return set()
    return set(pq.read_table(parts, columns=["problem_id"])["problem_id"].to_pylist())


def run_generation(job: GenerationJob, problems_path: Path, out_dir: Path) -> dict[str, float]:
    """Generate one completion per problem into ``out_dir`` (Parquet parts); return throughput.

    Resumable: problems that already have a row in a part of ``out_dir`` (left by a killed run)
    are skipped, and each new part is written atomically as soon as its batch is done.

    Problems enter as in-memory blocks of one batch each and results come back to this process,
    which writes the parts: no Ray Data read or write tasks, which would each claim a whole CPU
    and, with two trials evaluating at once on 2 CPUs, starve the engine actors forever.
    """
    # Our per-part log lines (rows, tok/s, ETA) replace Ray Data's bars, which interleave
    # unreadably when two trials evaluate at once.
    ray.data.DataContext.get_current().enable_progress_bars = False
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = pq.read_table(problems_path)
    done = _done_ids(out_dir)
    todo = problems.filter(pc.invert(pc.is_in(problems["problem_id"], pa.array(sorted(done),
                                                                                pa.string()))))
    if done:
        log.info("generate[%s]: resuming, %d of %d rows already done", job.label, len(done),
                 problems.num_rows)
    start, rows, tokens, errors = time.perf_counter(), 0, 0, 0
    run = uuid.uuid4().hex[:8]  # part names never collide with a killed run's
    for i, part in enumerate(_stream(job, todo)):
        # All-null error columns come back typed null; every part must share one schema.
        part = part.set_column(part.schema.get_field_index("error"), "error",
                               part["error"].cast(pa.string()))
        tmp = out_dir / f".part-{run}-{i:05d}.tmp"
        pq.write_table(part, tmp)
        os.replace(tmp, out_dir / f"part-{run}-{i:05d}.parquet")
        rows += part.num_rows
        tokens += int(pc.sum(part["n_tokens"]).as_py())
        errors += part.num_rows - part["error"].null_count
        elapsed = time.perf_counter() - start
        log.info("generate[%s]: %d/%d rows, %.1f tok/s, ETA %.0f s", job.label, len(done) + rows,
                 problems.num_rows, tokens / elapsed, elapsed / rows * (todo.num_rows - rows))
    seconds = time.perf_counter() - start
    assert rows == todo.num_rows, f"generated {rows} rows for {todo.num_rows} problems"
    stats = {"rows": rows, "resumed_rows": len(done), "errors": errors, "tokens": tokens,
             "seconds": round(seconds, 1), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
    log.info("generate[%s]: done, %d new rows (%d resumed, %d errors), %d tokens in %.0f s "
             "(%.1f tok/s)", job.label, rows, len(done), errors, tokens, seconds,
             stats["tokens_per_s"])
    return stats


def _stream(job: GenerationJob, problems: pa.Table):
    """Completed batches, as they finish, from a Ray Data actor pool of engines."""
    if problems.num_rows == 0:
        return iter(())
    blocks = [problems.slice(i, job.batch_size) for i in range(0, problems.num_rows, job.batch_size)]
    ds = ray.data.from_arrow(blocks).map_batches(
        _EngineActor,
        fn_constructor_kwargs={"job": job},
        compute=ray.data.ActorPoolStrategy(size=job.replicas),
        batch_size=job.batch_size,
        num_cpus=job.cpus_per_engine,
        batch_format="numpy",
    )
    return ds.iter_batches(batch_size=None, batch_format="pyarrow")


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
    work = stage.partial()
    job = teacher_job(label, teacher, model_path, **placement)
    stats = run_generation(job, problems.path / "train.parquet", work / "data")
    stage.commit(work)
    return stage, stats
