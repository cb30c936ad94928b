"""What every trial of a sweep shares, made before any trial: the models placed in the run root,
the problems, the hub benchmarks, and per teacher its generation and curation (each cached by
its key, so a rerun reuses what finished).

Teachers generate at once when the cluster can hold their actor pools together
(`teacher_waves`): on a cluster with a node for each teacher, one after another would leave all
but one teacher node idle. Each teacher's output is its own keyed stage: one that fails (too
many failed rows) does not stop the others, and a rerun regenerates only what is missing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixray import cluster, models
from mixray.artifacts import StageDir, StageRecord, TeacherRecord
from mixray.config import SweepConfig
from mixray.generate.job import EngineSite

log = logging.getLogger(__name__)


@dataclass
class Upstream:
    """What every trial shares, made before them (run_upstream)."""

    paths: dict[str, Path]  # model spec (students, local teachers, judge) -> folder in run root
    problems: StageDir  # train.parquet and eval.parquet
    problems_cached: bool
    problems_summary: dict[str, Any]
    teachers: dict[str, TeacherRecord] = field(default_factory=dict)  # in the sweep file's order

    @property
    def pools(self) -> dict[str, Path]:
        return {label: t.pool for label, t in self.teachers.items()}

    @property
    def curate(self) -> dict[str, dict[str, float]]:
        return {label: t.curate.stats or {} for label, t in self.teachers.items()}

    def stages(self) -> dict[str, dict[str, Any]]:
        """The stages as summary.json and the parent's upstream.json keep them: ``problems``,
        then ``generate.<label>`` and ``curate.<label>`` per teacher (`teacher_records` reads
        them back)."""
        out = {"problems": {"path": str(self.problems.path), "cached": self.problems_cached,
                            "summary": self.problems_summary}}
        for label, t in self.teachers.items():
            out[f"generate.{label}"] = t.generate.document()
            out[f"curate.{label}"] = t.curate.document()
        return out


def teacher_waves(cfg: SweepConfig, capacity: dict[str, float]) -> list[list[str]]:
    """The teachers in groups that generate at once, in the sweep file's order: with
    ``resources.teachers_at_once: fit``, as many as the cluster (``capacity``: what the teachers'
    node type has or may add) holds together — every replica's CPUs and GPUs — and the rest
    after; with ``one``, one at a time. A teacher too big to share a wave gets one of its own."""
    if cfg.resources.teachers_at_once == "one":
        return [[label] for label in cfg.teachers]
    waves: list[list[str]] = [[]]
    cpus = gpus = 0.0
    for label, teacher in cfg.teachers.items():
        c, g = teacher.replicas * cfg.resources.cpus_per_engine, teacher.replicas * teacher.gpus
        # a partial fit could deadlock: two pools each holding some of their replicas, each
        # waiting for the rest (Ray Data waits for a pool's replicas before it starts)
        if waves[-1] and (cpus + c > capacity.get("CPU", 0.0) + 1e-9
                          or gpus + g > capacity.get("GPU", 0.0) + 1e-9):
            waves.append([])
            cpus = gpus = 0.0
        waves[-1].append(label)
        cpus, gpus = cpus + c, gpus + g
    return waves


def run_upstream(cfg: SweepConfig, timings: dict[str, float]) -> Upstream:
    """Models, problems, and per-teacher generation and curation — each cached by its key.
    Raises GenerationFailed (naming every failed teacher) once every teacher of the wave that
    failed has finished or failed."""
    from mixray.evaluate.stage import fetch_benchmarks
    from mixray.problems.stage import build_problems, problems_summary

    t0 = time.perf_counter()
    specs = {*cfg.students, *(t.local_model for t in cfg.teachers.values() if t.local_model)}
    if cfg.evaluate.judge is not None and cfg.evaluate.judge.model is not None:
        specs.add(cfg.evaluate.judge.model)  # trials find it placed (evaluate.stage)
    # In the run root, never the driver's cache: the actors and Train workers that load them run
    # on other nodes, which share nothing else with this one.
    into = models.in_run_root(cfg.run_root_path)
    paths = {spec: models.resolve(spec, into=into) for spec in sorted(specs)}
    timings["models"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems, cached = build_problems(cfg.problems, cfg.run_root_path)
    fetch_benchmarks(cfg.evaluate, cfg.run_root_path)  # hub benchmarks, once, for every trial
    problems = decontaminated(cfg, problems)
    timings["problems"] = time.perf_counter() - t0
    up = Upstream(paths=paths, problems=problems, problems_cached=cached,
                  problems_summary=problems_summary(problems))
    if sites := vllm_sites(cfg, problems):
        from mixray.generate.job import check_vllm_sites

        check_vllm_sites(sites, cfg.resources.node_start_timeout_s)
    waves = teacher_waves(cfg, cluster.capacity(node_type=cfg.resources.node_types.teachers))
    t0 = time.perf_counter()
    for wave in waves:
        if len(wave) > 1:
            log.info("teachers %s generate at once", ", ".join(wave))
        _run_wave(cfg, wave, up, timings)
    timings["teachers"] = time.perf_counter() - t0  # all of them, waves after one another
    # in the sweep file's order, whichever teacher finished first (summary.json, the table)
    up.teachers = {label: up.teachers[label] for label in cfg.teachers}
    return up


def decontaminated(cfg: SweepConfig, problems: StageDir) -> StageDir:
    """The problems without the training problems that overlap an evaluation benchmark
    (`mixray.problems.decontaminate`; its layout, so every later stage reads it in their place).
    The benchmarks are loaded as the trials load them (the held-out set, hub ones from the run
    root's copy, reasoning-gym ones disjoint from the training problems)."""
    from mixray.evaluate.stage import load_benchmarks
    from mixray.problems.datasets import HUB_CACHE_DIR
    from mixray.problems.decontaminate import decontaminate

    if cfg.problems.decontaminate.mode == "off":
        return problems
    loaded = load_benchmarks(cfg.evaluate, heldout=problems.path / "eval.parquet",
                             exclude_problems=problems.path / "train.parquet",
                             cache=cfg.run_root_path / HUB_CACHE_DIR)
    texts = {b.name: [r["problem"] for r in b.rows] for b in loaded}
    return decontaminate(problems, texts, cfg.problems.decontaminate, cfg.run_root_path)


def vllm_sites(cfg: SweepConfig, problems: StageDir) -> list[EngineSite]:
    """Where this sweep will run vLLM, which `run_upstream` asks about on each engine's node
    type before any generation (`generate.job.check_vllm_sites`): the teachers that have yet to
    generate, and the evaluation and judge that every trial runs hours later, so that a trainer
    type without vLLM is refused before the teachers' hours, not after them. On a cluster whose
    evaluation node type starts from 0 nodes this boots one such node now, for a minute's probe:
    it then idles until its idle timeout (one node for ~5-10 min), a small price beside a sweep
    that fails after its generation."""
    from mixray.generate.stage import teacher_stage

    nt = cfg.resources.node_types
    runs = [(f"teacher {label!r}", t, nt.teachers) for label, t in cfg.teachers.items()
            if not teacher_stage(label, t, problems, cfg.run_root_path).is_committed()]
    runs.append(("the evaluation", cfg.evaluate, nt.evaluation))
    if cfg.evaluate.judge is not None:
        runs.append(("the judge", cfg.evaluate.judge, nt.evaluation))
    return [EngineSite(label, node_type, run.gpus) for label, run, node_type in runs
            if run.engine.kind == "vllm"]


def _run_wave(cfg: SweepConfig, wave: list[str], up: Upstream, timings: dict[str, float]) -> None:
    from mixray.generate.stage import GenerationFailed

    # One thread per teacher: each drives its own Ray Data pipeline (the actors do the work).
    with ThreadPoolExecutor(max_workers=len(wave), thread_name_prefix="teacher") as pool:
        futures = {label: pool.submit(_teacher, cfg, label, up) for label in wave}
        failed: list[str] = []
        for label, future in futures.items():
            try:
                timings[f"generate+curate.{label}"] = future.result()
            except GenerationFailed as e:
                failed.append(str(e))
    if failed:  # the others' outputs are committed: a rerun regenerates only these
        raise GenerationFailed("\n".join(failed))


def _teacher(cfg: SweepConfig, label: str, up: Upstream) -> float:
    """Generate and curate one teacher into `up`; returns its seconds."""
    from mixray.curate.stage import curate
    from mixray.generate.stage import generate_teacher

    t0 = time.perf_counter()
    teacher = cfg.teachers[label]
    model = up.paths[teacher.local_model] if teacher.local_model else None  # http: served
    gen, gen_stats = generate_teacher(label, teacher, model, up.problems, cfg.run_root_path,
                                      cfg.resources.placement("teachers"))
    cur, stats, cur_cached = curate(gen, cfg.curate, cfg.run_root_path)
    # each thread writes only its own label (run_upstream puts them in file order)
    up.teachers[label] = TeacherRecord(StageRecord(gen.path, gen_stats is None, gen_stats),
                                       StageRecord(cur.path, cur_cached, stats))
    return time.perf_counter() - t0


def format_stages(teachers: dict[str, TeacherRecord]) -> str:
    """One line per teacher: rows generated (or reused), failed rows, and what curation kept."""
    lines = []
    for label, t in teachers.items():
        gen, cur = t.generate, t.curate.stats or {}
        made = ("reused" if gen.cached or gen.stats is None else
                f"{gen.stats['rows']} generated, {gen.stats['resumed_rows']} resumed")
        lines.append(f"teacher {label}: {cur['rows']} rows ({made}), "
                     f"{round(cur['error_rate'] * cur['rows'])} failed "
                     f"({100 * cur['error_rate']:.1f}%), {cur['accepted']} correct "
                     f"({100 * cur['acceptance_rate']:.0f}%), {gen.path}")
    return "\n".join(lines)
