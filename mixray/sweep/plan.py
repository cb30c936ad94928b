"""What a sweep will do, said and checked before it does any of it: the plan `--dry-run` prints
(with `mixray.cost.estimate`'s preview: tokens, time, GPU-hours, and what the evaluation can
detect), the check that every trial and generation actor fits the cluster
(`check_resources`), and the memory preview (`memory_plan`: each training rank and engine rank
against its GPUs' memory)."""

from __future__ import annotations

import logging

from mixray import cluster
from mixray.config import SweepConfig
from mixray.cost.estimate import benchmark_sizes, estimate
from mixray.cost.fit import fit
from mixray.cost.text import format_estimate
from mixray.science.significance import detectable_difference, effective_problems, problems_needed
from mixray.sweep.resources import cpus_per_trial, gpus_per_trial

log = logging.getLogger(__name__)


def _source(cfg: SweepConfig) -> str:
    src = cfg.problems.source
    if src.kind == "reasoning_gym":
        return f"reasoning-gym {src.task!r} (seed {cfg.problems.seed})"
    held = (f"held out from {src.eval_source[0]} [{src.eval_source[1]}]" if src.separate_eval
            else f"held out by seed {cfg.problems.seed}")
    return f"{src.path} [{src.split}], {held}"


def plan(cfg: SweepConfig) -> str:
    t, r, es = cfg.train, cfg.resources, cfg.evaluate.sampling
    lines = [
        f"sweep {cfg.name!r}: run root {cfg.run_root_path}, MLflow {cfg.tracking_uri} "
        f"(experiment {cfg.experiment!r})",
        f"problems : {cfg.problems.train_size} train + {cfg.problems.eval_size} held-out from "
        f"{_source(cfg)}",
    ]
    for label, teacher in cfg.teachers.items():
        s = teacher.sampling
        lines.append(
            f"teacher  : {label!r} = {teacher.model or teacher.engine.model} on "
            f"{teacher.engine.kind} ({teacher.system_label}, max {s.max_new_tokens} tokens, "
            f"T={s.temperature}, n={s.n}, {teacher.replicas} replica(s) x {teacher.gpus:g} GPU)"
        )
    lines += [
        decontamination_plan(cfg),
        f"curate   : {cfg.curate.verifier}, pools keep {cfg.curate.keep} responses",
        f"trials   : {describe_search(cfg)}",
        f"train    : Ray Train + DeepSpeed ZeRO-{t.zero_stage}, {t.dtype}, "
        f"{t.num_workers} workers, "
        f"{f'{t.epochs:g} epochs' if t.epochs else f'{t.max_steps} steps'} x global batch "
        f"{t.global_batch}, lr {t.lr:g} ({t.lr_schedule}), packing {t.packing}"
        + (f", LoRA rank {t.lora.rank}" if t.lora else ""),
        f"evaluate : {', '.join(b.name for b in cfg.evaluate.benchmarks)}; "
        f"{'greedy' if es.temperature == 0 else f'T={es.temperature}'}, "
        f"n={es.n}, max {es.max_new_tokens} tokens",
        f"resources: {cpus_per_trial(cfg):g} CPU + {gpus_per_trial(cfg):g} GPU per trial, "
        f"{r.cpus_per_engine:g} CPU per generation actor",
        power_plan(cfg),
        *format_estimate(estimate(cfg)),
    ]
    return "\n".join(lines)


def decontamination_plan(cfg: SweepConfig) -> str:
    """What is checked of the training problems against the benchmarks, before generation."""
    d = cfg.problems.decontaminate
    if d.mode == "off":
        return ("decontam : off: training problems are not checked against the benchmarks "
                "(problems.decontaminate.mode)")
    names = ", ".join(b.name for b in cfg.evaluate.benchmarks)
    action = "set aside and counted per benchmark" if d.mode == "drop" else "an error"
    return (f"decontam : training problems sharing a run of {d.ngram} words (or, shorter, their "
            f"whole text) with {names} are {action}, before generation (open-r1's rule)")


def power_plan(cfg: SweepConfig) -> str:
    """What the evaluation can detect before any result is in: the unpaired bound at accuracy
    0.5 (the largest variance), so pairing, samples and a known accuracy only improve on it."""
    a = cfg.analysis
    sizes = benchmark_sizes(cfg)
    n_eff = effective_problems(sizes)
    seeds = len(cfg.search.seeds or [None])
    mde = detectable_difference(n_eff, 0.5, alpha=a.alpha, power=a.power)
    need = problems_needed(a.detect, 0.5, alpha=a.alpha, power=a.power)
    # P weighs benchmarks equally: a 30-problem AIME counts as much as a 500-problem MATH
    weighed = (f" (as {n_eff:.0f} for P, the unweighted mean over {len(sizes)} benchmarks)"
               if len(sizes) > 1 else "")
    return (f"power    : {sum(sizes)} held-out problems{weighed} x {cfg.evaluate.sampling.n} "
            f"sample(s) "
            f"x {seeds} seed(s) detect differences of {mde:.3f} or more in accuracy "
            f"({a.power:.0%} power, {a.alpha:g} level; an upper bound: unpaired, at accuracy "
            f"0.5); detecting {a.detect:g} takes up to {need} problems (analysis.detect)")


def check_resources(cfg: SweepConfig, capacity: dict[str, float],
                    where: str = "the Ray cluster") -> None:
    """Fail before any work when one trial or one generation actor can never be placed on the
    cluster (``where``, as messages name it) whose most is ``capacity``."""
    needs = [("one trial (train.num_workers x resources.cpus_per_train_worker + a little)",
              "CPU", cpus_per_trial(cfg)),
             ("one trial (train.num_workers x resources.gpus_per_train_worker)",
              "GPU", gpus_per_trial(cfg)),
             ("one generation actor (resources.cpus_per_engine)", "CPU",
              cfg.resources.cpus_per_engine)]
    for label, teacher in cfg.teachers.items():
        needs.append((f"one replica of teacher {label!r} (teachers.{label}.gpus_per_replica)",
                      "GPU", teacher.gpus))
    needs.append(("one evaluation replica (evaluate.gpus_per_replica)", "GPU",
                  cfg.evaluate.gpus))
    if cfg.evaluate.judge is not None:
        needs.append(("one judge replica (evaluate.judge.gpus_per_replica)", "GPU",
                      cfg.evaluate.judge.gpus))
    for what, resource, need in needs:
        cluster.require(what, resource, need, capacity, where)
    for role, node_type in cfg.resources.node_types.model_dump().items():
        if node_type is not None:
            cluster.require_node_type(f"resources.node_types.{role}", node_type, capacity,
                                      where)


def memory_plan(cfg: SweepConfig, gpu_gib: dict[str, float], where: str) -> str:
    """The memory preview's lines (`mixray.cost.fit`), warnings logged; ValueError listing every
    student or engine that cannot fit the GPUs of its node type (``gpu_gib``, from ``where``)."""
    found = fit(cfg, gpu_gib, where)
    for warning in found.warnings:
        log.warning("memory: %s", warning)
    text = "\n".join(found.lines)
    if found.refused:
        raise ValueError(f"{text}\nsweep {cfg.name!r}: {len(found.refused)} plan(s) cannot fit "
                         "their GPUs (nothing was started):\n"
                         + "\n".join(f"  - {r}" for r in found.refused))
    return text


def describe_search(cfg: SweepConfig) -> str:
    s = cfg.search
    axes = ", ".join(f"{k} {d.kind} {d.corners()}" for k, d in s.axes().items()) or "no axes"
    how = {"grid": "grid", "random": f"random ({s.num_samples} draws, seed {s.seed})",
           "optuna": f"optuna TPE ({s.num_samples} per student, {s.mode} {s.metric})"}
    sched = s.scheduler
    stop = (f", ASHA on {sched.metric} ({sched.mode}, grace {sched.grace_period}, "
            f"factor {sched.reduction_factor:g})" if sched.kind == "asha" else "")
    return (f"{cfg.n_trials()} = students {cfg.students} x {how[s.algorithm]} over {axes}{stop} "
            f"(long share = pool {cfg.mix.long_pool!r} against {cfg.mix.short_pool!r})")
