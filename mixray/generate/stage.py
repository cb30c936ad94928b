"""The generation stage: problems Parquet -> Ray Data actor pool of engines -> completions Parquet.

Each problem is answered ``sampling.n`` times: one output row per (problem, sample). Output
columns: problem_id, problem, answer (gold, carried for curation), teacher, sample_idx (0..n-1),
prompt (the user turn), completion, n_tokens, finish_reason ("stop" | "length" | "error"),
error (the engine's message for a row it could not generate, else null), and the completion in
its two parts (`mixray.generate.reasoning`): reasoning (null when the model does not think),
response (the answer, what is graded; null when the reasoning never closed) and
reasoning_tokens (null where unknown). (problem_id, sample_idx) is unique. Failed rows are
counted, bounded (``max_error_rate``: above it the stage fails and is not committed) and
retried by the next run; they are never cached as success.

The engine is the model run's choice (`ModelRun.engine`: a teacher's, an evaluation's, the
judge's): hf (transformers), vllm (`vllm.LLM`, imported only when chosen) or http (an
OpenAI-compatible endpoint). Each actor of the pool holds one engine and reserves
``placement.cpus_per_engine`` CPUs and ``gpus_per_replica`` GPUs. One pass is a
`mixray.generate.job.GenerationJob` (`job.model_job`), checked by `job.preflight` before any
actor starts.

Every output (`generate_cached`: teachers, evaluations, the judge) is keyed by what determines its
bytes (`run_spec`: inputs, model, engine kind and its precision or served model, prompt, system
turn, sampling); replicas, batch size, CPUs, GPUs, rate
limits and retries are placement and stay out of the key.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mixray import cluster, metrics
from mixray.artifacts import StageDir
from mixray.generate import reasoning
from mixray.generate.config import STYLE_SYSTEM, ModelRun, TeacherConfig  # noqa: F401 (re-export)
from mixray.generate.engine import Completion, Messages, row_seed
from mixray.generate.handover import await_engines_exit
from mixray.generate.job import (
    GenerationJob,
    Placement,
    load_engine,
    messages,
    model_job,
    preflight,
)

log = logging.getLogger(__name__)

# Columns that may be all null in a part, and their types.
NULLABLE_COLUMNS = {"error": pa.string(), "reasoning": pa.string(), "response": pa.string(),
                    "reasoning_tokens": pa.int64()}
# Which engine actor answered a batch: run_generation collects them and drops the column.
ENGINE_COLUMN = "_engine_actor"

# Bump one when that engine's output for the same inputs changes.
# 2: rows carry reasoning, response and reasoning_tokens beside the completion (issue 28).
ENGINE_VERSIONS = {"hf": "hf-2", "vllm": "vllm-2", "http": "http-2"}
# How sampled rows are seeded (`row_seed`, and for HF one generator per batch seeded from its
# rows); it enters the key of sampled generations only: greedy output does not depend on it.
SEEDING = "row-1"
INPUT_COLUMNS = ("problem_id", "problem", "answer")


class GenerationFailed(RuntimeError):
    """More rows failed than the job allows. Its parts stay where they are, uncommitted: a rerun
    regenerates the failed rows only (CLIs exit 1 on this)."""


class _EngineActor:
    """One Ray Data actor: loads the engine once, then turns batches of rows into completions."""

    def __init__(self, job: GenerationJob) -> None:
        self.job = job
        self.actor_id = ray.get_runtime_context().get_actor_id()  # for `await_engines_exit`
        self.engine = load_engine(job)

    def __del__(self) -> None:
        # Ray Data deletes the UDF when it shuts its pool down gracefully (__ray_shutdown__):
        # close the engine then, so its GPU memory is free for what runs next on those GPUs
        # (the judge after the evaluation) without waiting for Ray to reap the process.
        engine = getattr(self, "engine", None)
        if engine is not None:
            self.engine = None
            engine.close()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        job = self.job
        prompts = [messages(job.system, job.prompt, str(p)) for p in batch["problem"]]
        seeds = [row_seed(job.sampling.seed, str(pid), int(s))
                 for pid, s in zip(batch["problem_id"], batch["sample_idx"], strict=True)]
        outs = self._generate(prompts, seeds)
        n = len(outs)
        return {
            "problem_id": batch["problem_id"],
            "problem": batch["problem"],
            "answer": batch["answer"],
            "teacher": np.array([job.label] * n),
            "sample_idx": batch["sample_idx"].astype(np.int32),
            "prompt": np.array([p[-1]["content"] for p in prompts]),
            "n_tokens": np.array([o.n_tokens for o in outs], dtype=np.int64),
            "finish_reason": np.array([o.finish_reason for o in outs]),
            "error": np.array([(o.error or "engine error") if o.finish_reason == "error" else None
                               for o in outs], dtype=object),
            **reasoning.columns(outs, self.job.reasoning, self.engine.count_tokens),
            ENGINE_COLUMN: np.array([self.actor_id] * n),  # dropped before the part is written
        }

    def _generate(self, prompts: list[Messages], seeds: list[int]) -> list[Completion]:
        """The whole batch at once; if the engine fails on it, row by row, so one bad row
        becomes an error row (kept, counted, with its reason) instead of failing the job.
        Engines that fail single rows themselves (http) return error completions instead."""
        sampling = self.job.sampling
        try:
            outs = self.engine.generate(prompts, sampling, seeds)
            assert len(outs) == len(prompts), f"{len(outs)} completions for {len(prompts)} prompts"
            return outs
        except Exception as batch_error:  # noqa: BLE001 - retried row by row just below
            log.warning("generate[%s]: batch failed (%s); retrying row by row", self.job.label,
                        batch_error)
        outs = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            try:
                outs.append(self.engine.generate([prompt], sampling, [seed])[0])
            except Exception as e:  # noqa: BLE001 - recorded in the row, counted by the caller
                outs.append(Completion(text="", n_tokens=0, finish_reason="error",
                                       error=f"{type(e).__name__}: {e}"))
        return outs


def expand_samples(problems: pa.Table, n: int) -> pa.Table:
    """One row per (problem, sample), problem-major: the input columns plus ``sample_idx``."""
    assert n >= 1, n
    ids = problems["problem_id"]
    if pc.count_distinct(ids).as_py() != problems.num_rows:
        raise ValueError("problem_id must be unique in the problems given to generation")
    base = problems.select(list(INPUT_COLUMNS))
    rows = base.take(pa.array(np.repeat(np.arange(base.num_rows), n)))
    return rows.append_column("sample_idx",
                              pa.array(np.tile(np.arange(n, dtype=np.int32), base.num_rows)))


def _parts(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("part-*.parquet"))


def done_rows(out_dir: Path) -> set[tuple[str, int]]:
    """(problem_id, sample_idx) of the rows finished parts in ``out_dir`` hold. Error rows are
    not done: `retire_failed` takes them out before a run, so that it generates them again."""
    parts = _parts(out_dir)
    if not parts:
        return set()
    table = pq.read_table(parts, columns=["problem_id", "sample_idx", "error"])
    table = table.filter(pc.is_null(table["error"]))
    return set(zip(table["problem_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))


def retire_failed(out_dir: Path) -> int:
    """Take the error rows out of ``out_dir``'s parts, so that this run generates them again;
    returns how many. Each part is replaced atomically (``os.replace``), so a run killed here
    leaves every row either still failed (and retried next time) or gone, never twice."""
    retired = 0
    for part in _parts(out_dir):
        table = pq.read_table(part)
        ok = table.filter(pc.is_null(table["error"]))
        if ok.num_rows == table.num_rows:
            continue
        retired += table.num_rows - ok.num_rows
        if ok.num_rows == 0:
            part.unlink()
            continue
        tmp = part.with_name(f".{part.stem}.retry.tmp")
        pq.write_table(ok, tmp)
        os.replace(tmp, part)
    return retired


def check_errors(job: GenerationJob, out_dir: Path) -> tuple[int, int]:
    """(failed rows, all rows) of ``out_dir``; raises GenerationFailed, naming the job, the
    count, the share and the first distinct messages, when the share is over the job's bound."""
    parts = _parts(out_dir)
    if not parts:
        return 0, 0
    errors = pq.read_table(parts, columns=["error"])["error"]
    failed, total = len(errors) - errors.null_count, len(errors)
    if failed <= job.max_error_rate * total:
        return failed, total
    distinct = list(dict.fromkeys(e for e in errors.to_pylist() if e is not None))
    shown = "; ".join(repr(e[:200]) for e in distinct[:3])
    raise GenerationFailed(
        f"generate[{job.label}]: {failed} of {total} rows failed ({failed / total:.1%}, over "
        f"max_error_rate {job.max_error_rate:.1%}); {len(distinct)} distinct error(s), first: "
        f"{shown}. Nothing was kept as finished: rerun to regenerate only the failed rows "
        f"(kept in {out_dir}), or raise max_error_rate.")


def pending_rows(rows: pa.Table, done: set[tuple[str, int]]) -> pa.Table:
    """The rows of ``rows`` not in ``done``; every done row must be one of ``rows``."""
    keys = list(zip(rows["problem_id"].to_pylist(), rows["sample_idx"].to_pylist(), strict=True))
    stray = done - set(keys)
    assert not stray, f"{len(stray)} finished rows belong to no (problem, sample) of this job"
    return rows.filter(pa.array([k not in done for k in keys], pa.bool_()))


def run_generation(job: GenerationJob, problems_path: Path, out_dir: Path) -> dict[str, float]:
    """Generate ``job.sampling.n`` completions per problem into ``out_dir`` (Parquet parts);
    return throughput.

    Resumable: (problem, sample) rows that already have a row in a part of ``out_dir`` (left by
    a killed or failed run) are skipped, except error rows, which are generated again; each new
    part is written atomically as soon as its batch is done. Raises GenerationFailed when more
    than ``job.max_error_rate`` of all rows failed: the caller must not commit the output.

    Rows enter as in-memory blocks of one batch each and results come back to this process,
    which writes the parts: no Ray Data read or write tasks, which would each claim a whole CPU
    and, with two trials evaluating at once on 2 CPUs, starve the engine actors forever.
    """
    # Our per-part log lines (rows, tok/s, ETA) replace Ray Data's bars, which interleave
    # unreadably when two trials evaluate at once.
    ray.data.DataContext.get_current().enable_progress_bars = False
    preflight(job)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = pq.read_table(problems_path, columns=list(INPUT_COLUMNS))
    rows = expand_samples(problems, job.sampling.n)
    retried = retire_failed(out_dir)
    done = done_rows(out_dir)
    todo = pending_rows(rows, done)
    if done or retried:
        log.info("generate[%s]: resuming, %d of %d rows already done, %d that failed before "
                 "are retried", job.label, len(done), rows.num_rows, retried)
    # wall clock too: when each teacher ran, comparable across nodes (NTP-synced clocks)
    started_at, start, new, tokens, errors = time.time(), time.perf_counter(), 0, 0, 0
    run = uuid.uuid4().hex[:8]  # part names never collide with a killed run's
    engines: set[str] = set()
    for i, part in enumerate(_stream(job, todo)):
        engines.update(part[ENGINE_COLUMN].to_pylist())
        part = part.drop_columns([ENGINE_COLUMN])
        # All-null columns come back typed null; every part must share one schema.
        for name, typ in NULLABLE_COLUMNS.items():
            part = part.set_column(part.schema.get_field_index(name), name, part[name].cast(typ))
        tmp = out_dir / f".part-{run}-{i:05d}.tmp"
        pq.write_table(part, tmp)
        os.replace(tmp, out_dir / f"part-{run}-{i:05d}.parquet")
        part_tokens, part_errors = _record_part(job.label, part)
        new, tokens, errors = new + part.num_rows, tokens + part_tokens, errors + part_errors
        elapsed = time.perf_counter() - start
        metrics.set_generation_progress(job.label, done=len(done) + new, total=rows.num_rows,
                                        tokens_per_s=tokens / elapsed)
        log.info("generate[%s]: %d/%d rows, %.1f tok/s, ETA %.0f s", job.label, len(done) + new,
                 rows.num_rows, tokens / elapsed, elapsed / new * (todo.num_rows - new),
                 extra={"live": f"generate[{job.label}]"})  # one line per stage on a console
    seconds = time.perf_counter() - start
    assert new == todo.num_rows, f"generated {new} rows for {todo.num_rows} pending rows"
    if job.engine.kind == "vllm" or job.gpus_per_replica > 0:
        await_engines_exit(job.label, engines)  # the GPU hand-over: see mixray.generate.handover
    log.info("generate[%s]: %d new rows (%d resumed, %d retried, %d failed), %d tokens in "
             "%.0f s (%.1f tok/s)", job.label, new, len(done), retried, errors, tokens, seconds,
             tokens / max(seconds, 1e-9))
    failed, total = check_errors(job, out_dir)
    assert total == rows.num_rows, f"{total} rows on disk for {rows.num_rows} (problem, sample)s"
    if failed:
        log.warning("generate[%s]: %d of %d rows failed (%.1f%%, within max_error_rate %.1f%%); "
                    "column 'error' says why", job.label, failed, total, 100 * failed / total,
                    100 * job.max_error_rate)
    return {"rows": new, "resumed_rows": len(done), "retried_rows": retried, "errors": failed,
            "error_rate": round(failed / max(total, 1), 4), "tokens": tokens,
            "problems": problems.num_rows, "samples_per_problem": job.sampling.n,
            "seconds": round(seconds, 1), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
            "started_at": round(started_at, 3), "finished_at": round(time.time(), 3)}


def _record_part(label: str, part: pa.Table) -> tuple[int, int]:
    """A written part's (tokens, failed rows); its rows, failed and truncated rows and tokens go
    to the metrics (`mixray.metrics`) too."""
    tokens = int(pc.sum(part["n_tokens"]).as_py() or 0)
    failed = part.num_rows - part["error"].null_count
    truncated = int(pc.sum(pc.equal(part["finish_reason"], "length")).as_py() or 0)
    metrics.record_generation(label, rows=part.num_rows, failed=failed, truncated=truncated,
                              tokens=tokens)
    return tokens, failed


def _stream(job: GenerationJob, rows: pa.Table) -> Iterator[pa.Table]:
    """Completed batches, as they finish, from a Ray Data actor pool of engines."""
    if rows.num_rows == 0:
        return iter(())
    blocks = [rows.slice(i, job.batch_size) for i in range(0, rows.num_rows, job.batch_size)]
    remote_args: dict[str, Any] = {"num_cpus": job.placement.cpus_per_engine}
    if job.gpus_per_replica > 0:
        remote_args["num_gpus"] = job.gpus_per_replica
    if job.placement.node_type:
        remote_args["resources"] = {job.placement.node_type: cluster.NODE_TYPE_SHARE}
    ds = ray.data.from_arrow(blocks).map_batches(
        _EngineActor,
        fn_constructor_kwargs={"job": job},
        compute=ray.data.ActorPoolStrategy(size=job.replicas),
        batch_size=job.batch_size,
        batch_format="numpy",
        **remote_args,
    )
    # prefetch_batches=0: with Ray's default of 1 each finished batch is held back until the
    # next one finishes (measured: parts arrived one whole batch late), which delays its part,
    # and a killed run loses that batch too.
    return ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


def run_spec(label: str, run: ModelRun, model: Any, prompt: str, system: str | None,
             inputs_key: str) -> dict[str, Any]:
    """What determines a model run's generated bytes, the generation stage's key: ``model``
    names the weights (a teacher's spec, an evaluated folder's fingerprint; None when served)."""
    spec: dict[str, Any] = {
        "engine": ENGINE_VERSIONS[run.engine.kind],
        "problems": inputs_key,
        "label": label,
        "model": model,
        "prompt": prompt,
        "system": system,
        "sampling": run.sampling.model_dump(),
        "engine_settings": run.engine.content(),
    }
    if run.sampling.temperature > 0:
        spec["seeding"] = SEEDING
    # only where set, so that the keys of models run without them stay what they were
    if run.chat_template_kwargs:
        spec["chat_template_kwargs"] = run.chat_template_kwargs
    if run.reasoning.split != "none":
        spec["reasoning"] = run.reasoning.model_dump()
    return spec


def generation_spec(label: str, teacher: TeacherConfig, problems_key: str) -> dict[str, Any]:
    """A teacher's `run_spec`: its system turn's text as the engine gets it (None: none), so a
    style preset and the same text written out share one generation."""
    return run_spec(label, teacher, teacher.model, teacher.prompt, teacher.system_turn,
                    problems_key)


def teacher_stage(label: str, teacher: TeacherConfig, problems: StageDir,
                  run_root: Path) -> StageDir:
    return StageDir(run_root, "generate", generation_spec(label, teacher, problems.key))


FailedRows = Literal["kept", "retried"]
"""What a rerun does with the failed rows of a committed generation: ``kept`` (reused as it is:
a teacher's, which curation has keyed its pool on) or ``retried`` (reopened and generated again:
an evaluation's, scored anew each run)."""


def generate_cached(job: GenerationJob, spec: dict[str, Any], inputs_path: Path, root: Path,
                    failed_rows: FailedRows = "kept") -> tuple[StageDir, dict[str, float] | None]:
    """Run ``job`` over ``inputs_path`` into the generate stage's output keyed by ``spec``
    under ``root`` (``<root>/artifacts/generate/<key>/data``); returns (where, stats or None
    when reused). Resumes a killed or failed run's parts; the stats of the run that finished
    it lie beside the data (``stats.json``). Raises GenerationFailed, leaving the work
    uncommitted, when more rows failed than ``job.max_error_rate`` allows."""
    stage = StageDir(root, "generate", spec)
    with stage.locked():  # two trials' judges asked the same questions: one generates
        if stage.is_committed():
            stats = json.loads((stage.path / "stats.json").read_text())
            if failed_rows == "kept" or not stats["errors"]:
                log.info("generate[%s]: reusing %s", job.label, stage.path)
                return stage, None
            log.info("generate[%s]: retrying the %d failed rows of %s", job.label,
                     stats["errors"], stage.path)
            stage.reopen()
        work = stage.partial()
        stats = run_generation(job, inputs_path, work / "data")
        (work / "stats.json").write_text(json.dumps(stats, indent=2))
        stage.commit(work)
    return stage, stats


def generate_teacher(
    label: str, teacher: TeacherConfig, model_path: Path | None, problems: StageDir,
    run_root: Path, placement: Placement = Placement(),
) -> tuple[StageDir, dict[str, float] | None]:
    """A teacher's cached generation (`generate_cached`). ``model_path`` is the resolved
    `teacher.local_model` (None for an http teacher)."""
    job = model_job(teacher, label, model_path, teacher.prompt, teacher.system_turn, placement)
    return generate_cached(job, generation_spec(label, teacher, problems.key),
                           problems.path / "train.parquet", run_root)
