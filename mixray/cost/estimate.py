"""The cost preview: what a sweep will generate, train and evaluate, in tokens, seconds and
GPU-hours, before it runs (`estimate`; `--dry-run` prints it in the plan, in the words of
`mixray.cost.text`).

Tokens: a teacher generates problems x sampling.n x the expected tokens per response; a trial
trains on the rows it consumes (epochs x the mix's rows, or max_steps x the global batch) x the
expected row length (chat template + system prompt + prompt + response, capped at max_length);
an evaluation generates benchmark problems x sampling.n x the expected response, which for a
trained student is its mix's mean response. Seconds: a start-up cost plus tokens / (rate per
unit x units), a unit being a GPU where the stage has them, else a CPU replica (generation) or
a training worker; GPU-hours = seconds x GPUs. The rates and every other default are in
`mixray.cost.config` with their sources; the sweep file's `cost:` section overrides them, and
``cost.calibrate_from`` takes them from a previous sweep's measurements
(`mixray.cost.actual` writes them to summary.json). No Ray, no MLflow.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixray.config import SweepConfig
from mixray.cost import config as d
from mixray.cost.config import Table, Throughput
from mixray.cost.shape import SIZE_RE
from mixray.generate.config import ModelRun
from mixray.problems.config import DatasetSource
from mixray.problems.datasets import read_local

# Reasoning models write long CoT whatever they are asked (QwQ, DeepSeek-R1 and its distills).
LONG_COT_RE = re.compile(r"qwq|deepseek-r1|-r1-|reason|think", re.IGNORECASE)
Measured = dict[str, dict[str, dict[str, Any]]]  # stage -> teacher label or student -> values


@dataclass(frozen=True)
class StageCost:
    tokens: float
    seconds: float | None  # None: the model's size, so its rate, is unknown
    gpu_hours: float
    count: float  # tokens = count x each: rows consumed, or problems x samples
    each: float  # tokens per row or per response
    unit: str  # what count counts: "rows", "problems x n"
    times: int = 1  # trials this one stands for (Optuna: proposals not known in advance)


@dataclass(frozen=True)
class CostEstimate:
    generate: dict[str, StageCost]  # teacher label ->
    train: dict[str, StageCost]  # trial name (Optuna: student) ->
    evaluate: dict[str, StageCost]
    notes: list[str]
    baselines: dict[str, StageCost] = field(default_factory=dict)  # student -> (sweep.baseline)

    def stages(self) -> list[StageCost]:
        return [*self.generate.values(), *self.train.values(), *self.evaluate.values(),
                *self.baselines.values()]


def params_b(spec: str) -> float | None:
    """Billions of parameters of a model spec: known specs, else the size its name gives."""
    if spec in d.PARAMS_B:
        return d.PARAMS_B[spec]
    sizes = SIZE_RE.findall(Path(spec.partition("@")[0]).name)
    if not sizes:
        return None
    value, unit = sizes[-1]
    return float(value) / (1000.0 if unit in "mM" else 1.0)


def interpolate(table: Table, size: float) -> float:
    """tokens/s at `size` billion parameters (`mixray.cost.config.Throughput` says how)."""
    points = sorted(table.items())
    if size <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if size <= x1:
            t = math.log(size / x0) / math.log(x1 / x0)
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    x, y = points[-1]
    return y * x / size


def units(run: ModelRun) -> tuple[float, float]:
    """(the units a model run's rate is multiplied by, the GPUs it holds)."""
    if run.engine.kind == "http":
        return float(run.batch_size * run.replicas), 0.0
    gpus = run.replicas * run.gpus
    return (gpus, gpus) if gpus > 0 else (float(run.replicas), 0.0)


def generation_rate(run: ModelRun, spec: str | None, th: Throughput) -> float | None:
    """tokens/s of one unit of a model run; None when the model's size is unknown."""
    if run.engine.kind == "http":
        return th.http_per_request
    size = params_b(spec) if spec else None
    if size is None:
        return None
    if run.gpus > 0:
        rate = interpolate(d.GENERATE_GPU | th.generate_gpu, size)
        return rate * (th.hf_on_gpu if run.engine.kind == "hf" else 1.0)
    rate = interpolate(d.GENERATE_CPU | th.generate_cpu, size)
    return rate * (th.vllm_on_cpu if run.engine.kind == "vllm" else 1.0)


def train_rate(one: SweepConfig, measured: Measured) -> float | None:
    """Training tokens/s per worker: measured, else MFU x peak / FLOPs per token on GPUs (6 N;
    LoRA 4 N, no weight gradients; attention's FLOPs left out, ~+20% for 3B at 8k tokens), else
    the CPU table."""
    th, student, gpu = one.cost.throughput, one.students[0], one.resources.gpus_per_train_worker
    got = measured["train"].get(student, {})
    if got.get("gpu") == (gpu > 0) and got.get("tokens_per_s_per_worker"):
        return got["tokens_per_s_per_worker"]
    size = params_b(student)
    if size is None:
        return None
    if gpu > 0:
        flops = (4 if one.train.lora else 6) * size * 1e9
        return th.train_mfu * th.gpu_peak_tflops * 1e12 * gpu / flops
    return interpolate(d.TRAIN_CPU | th.train_cpu, size)


def _stage(count: float, each: float, unit: str, rate: float | None, n_units: float,
           gpus: float, startup: float, times: int = 1) -> StageCost:
    tokens = count * each
    seconds = None if rate is None or n_units <= 0 else startup + tokens / (rate * n_units)
    return StageCost(tokens, seconds, (seconds or 0.0) * gpus / 3600, count, each, unit, times)


def startup(th: Throughput, stage: d.Stage, gpus: float) -> float:
    """A stage's fixed seconds (model load, actor or Train start) on GPUs or CPUs."""
    return th.startup_s.get(stage, d.STARTUP_S["gpu" if gpus else "cpu"][stage])


def calibration(cfg: SweepConfig) -> Measured:
    """A previous sweep's measurements (its summary.json's cost.measured; from an older summary,
    the curation stats' lengths and acceptance), by stage, then teacher label or student."""
    measured: Measured = {"generate": {}, "train": {}, "evaluate": {}}
    if cfg.cost.calibrate_from is None:
        return measured
    path = Path(cfg.cost.calibrate_from).expanduser()
    path = path / "summary.json" if path.is_dir() else path
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cost.calibrate_from: no readable sweep summary at {path} ({e}); give "
                         "a summary.json from <run root>/sweeps/<name>/<invocation>/") from None
    measured |= summary.get("cost", {}).get("measured", {})
    for key, stage in summary.get("stages", {}).items():
        label = key.removeprefix("curate.")
        if key.startswith("curate.") and label not in measured["generate"]:
            measured["generate"][label] = {"acceptance": stage["stats"]["acceptance_rate"],
                                           "tokens_per_response": stage["stats"]["tokens_mean"]}
    return measured


def teacher_measured(cfg: SweepConfig, label: str, measured: Measured) -> dict[str, Any]:
    """What calibration measured of this teacher: the same label, and the same model and engine
    where the measurement names them; a rate only from the same device (GPU or CPU)."""
    teacher, got = cfg.teachers[label], measured["generate"].get(label, {})
    if (got.get("model", teacher.model), got.get("engine", teacher.engine.kind)) != \
            (teacher.model, teacher.engine.kind):
        return {}
    if got.get("gpu") != (teacher.gpus > 0):
        got = {k: v for k, v in got.items() if k != "tokens_per_s_per_unit"}
    return got


def response_tokens(cfg: SweepConfig, label: str, measured: Measured) -> float:
    """Expected tokens per response of a teacher: measured, max_new_tokens for a random model,
    else its CoT style's default (`cot_style`), capped at max_new_tokens."""
    teacher = cfg.teachers[label]
    cap = teacher.sampling.max_new_tokens
    if (got := teacher_measured(cfg, label, measured).get("tokens_per_response")) is not None:
        return min(cap, got)
    if teacher.model in d.RANDOM_MODELS:
        return cap
    return min(cap, getattr(cfg.cost.tokens_per_response, cot_style(cfg, label)))


def cot_style(cfg: SweepConfig, label: str) -> str:
    """long or short: the teacher's style preset, else long for a teacher labelled long or a
    reasoning model (LONG_COT_RE), else short."""
    teacher = cfg.teachers[label]
    if teacher.style is not None:
        return teacher.style
    name = teacher.model or getattr(teacher.engine, "model", "")
    return "long" if label == "long" or LONG_COT_RE.search(name) else "short"


def train_problems(cfg: SweepConfig) -> int:
    """problems.train_size; for `all`: cost.train_problems, else the rows of a local source
    file (less the held-out problems carved out of it), else MATH's 7,500."""
    size = cfg.problems.train_size
    if size != "all":
        return size
    if cfg.cost.train_problems:
        return cfg.cost.train_problems
    src = cfg.problems.source
    if isinstance(src, DatasetSource) and Path(src.path).is_file():   # hub paths are 'hf:...'
        carved = 0 if src.separate_eval else cfg.problems.eval_size
        assert isinstance(carved, int), "validated: carving needs a count"
        stat = Path(src.path).stat()
        return max(0, _file_rows(src.path, stat.st_mtime_ns, stat.st_size) - carved)
    return d.DEFAULT_TRAIN_PROBLEMS


@functools.lru_cache(maxsize=8)
def _file_rows(path: str, mtime_ns: int, size: int) -> int:
    """Records of a local file, read once per version of it: an estimate asks once per
    teacher and once per trial (paper-mix: 4 + 6 + baselines)."""
    return len(read_local(Path(path)))


def problem_chars(cfg: SweepConfig) -> float:
    """Mean characters of a problem: cost.problem_chars, else 16 problems drawn in memory from
    the reasoning-gym task (a second), else the default for datasets."""
    src = cfg.problems.source
    if cfg.cost.problem_chars is not None or src.kind != "reasoning_gym":
        return cfg.cost.problem_chars or d.DEFAULT_PROBLEM_CHARS
    import reasoning_gym

    drawn = reasoning_gym.create_dataset(src.task, size=16, seed=cfg.problems.seed,
                                         **src.task_args)
    return sum(len(str(item["question"])) for item in drawn) / 16


def generation_cost(cfg: SweepConfig, label: str, measured: Measured) -> StageCost:
    """A teacher's generation."""
    teacher, th = cfg.teachers[label], cfg.cost.throughput
    n, problems = teacher.sampling.n, train_problems(cfg)
    length = response_tokens(cfg, label, measured)
    n_units, gpus = units(teacher)
    rate = teacher_measured(cfg, label, measured).get("tokens_per_s_per_unit") or \
        generation_rate(teacher, teacher.model, th)
    return _stage(problems * n, length, f"problems x {n}", rate, n_units, gpus,
                  startup(th, "generate", gpus))


def mix_rows(one: SweepConfig, measured: Measured) -> dict[str, float]:
    """Expected rows of a trial's mix, per pool (`mixray.mix.manifest.resolve_budget`)."""
    from mixray.mix.schedule import demand, segments

    mix = one.mix
    share = demand(segments(mix))  # in mix.unit
    problems = max(0, train_problems(one) - mix.validation_problems)
    keeps = {p: 1.0 if one.curate.keep == "all" else teacher_measured(one, p, measured).get(
        "acceptance", one.cost.acceptance) for p in share}
    per_row = {p: 1.0 if mix.unit == "samples" else response_tokens(one, p, measured)
               for p in share}  # what a row adds, in mix.unit
    if mix.per_problem:  # each shared problem once, from one pool (the paper's 5,383 pairs)
        total = problems * min(keeps.values())
        if mix.budget != "all":
            total = min(total, mix.budget / sum(share[p] * per_row[p] for p in share))
        return {p: total * share[p] for p in share}
    supply = {p: problems * one.teachers[p].sampling.n * keeps[p] * mix.max_repeats * per_row[p]
              for p in share}
    total = (min(supply[p] / w for p, w in share.items() if w > 0) if mix.budget == "all"
             else mix.budget)
    return {p: total * share[p] / per_row[p] for p in share}


def row_tokens(one: SweepConfig, label: str, chars: float, measured: Measured) -> float:
    """Expected tokens of one training row from teacher `label`: template, system prompt,
    prompt and response, capped at max_length."""
    t, student = one.train, one.students[0]
    per_token = one.cost.chars_per_token or d.CHARS_PER_TOKEN.get(student,
                                                                  d.DEFAULT_CHARS_PER_TOKEN)
    template = one.teachers[label].prompt  # a str.format template: its braces are doubled
    prompt = template.replace("{problem}", "").replace("{{", "{").replace("}}", "}")
    text = len(t.system_prompt) + len(prompt) + chars
    return min(t.max_length, one.cost.template_tokens + text / per_token
               + response_tokens(one, label, measured))


def _train(one: SweepConfig, chars: float, measured: Measured, times: int) -> StageCost:
    t, th = one.train, one.cost.throughput
    rows = mix_rows(one, measured)
    total = sum(rows.values())
    mean = (sum(rows[p] * row_tokens(one, p, chars, measured) for p in rows) / total
            if total else 0.0)
    if t.epochs is not None:
        count, unit = t.epochs * total, "rows"
    elif t.packing == "none":  # the loop cycles the manifest up to max_steps
        count, unit = t.max_steps * t.global_batch, "rows"
    else:  # sequences of max_length, ~98% full (mixray.train.data.PACK_WINDOW)
        count, unit, mean = t.max_steps * t.global_batch, "packed rows", t.max_length * 0.98
    gpus = t.num_workers * one.resources.gpus_per_train_worker
    return _stage(count, mean, unit, train_rate(one, measured), t.num_workers, gpus,
                  startup(th, "train", gpus), times)


def benchmark_sizes(one: SweepConfig) -> list[int]:
    """Problems of each benchmark: limits, registry sizes, the held-out set's size."""
    from mixray.evaluate.benchmarks import REGISTRY

    sizes = []
    for b in one.evaluate.benchmarks:
        size = {"heldout": one.problems.eval_size, "reasoning_gym": getattr(b, "size", None),
                "registry": REGISTRY[b.name].expected_size if b.kind == "registry" else None,
                "dataset": getattr(b, "expected_size", None)}[b.kind]
        size = d.UNKNOWN_BENCHMARK_SIZE if size in (None, "all") else size
        sizes.append(min(size, getattr(b, "limit", None) or size))
    return sizes


def benchmark_problems(one: SweepConfig) -> int:
    """Problems over every benchmark."""
    return sum(benchmark_sizes(one))


def _evaluate(one: SweepConfig, measured: Measured, times: int) -> StageCost:
    ev, student, th = one.evaluate, one.students[0], one.cost.throughput
    got = measured["evaluate"].get(student, {})
    rows = mix_rows(one, measured)
    total, cap = sum(rows.values()), ev.sampling.max_new_tokens
    imitated = (sum(rows[p] * response_tokens(one, p, measured) for p in rows) / total
                if total else cap)  # a trained student writes like its mix
    length = min(cap, got.get("tokens_per_response")
                 or (cap if student in d.RANDOM_MODELS else imitated))
    n_units, gpus = units(ev)
    rate = (got.get("tokens_per_s_per_unit") if got.get("gpu") == (gpus > 0) else None) \
        or generation_rate(ev, student, th)
    problems = benchmark_problems(one)
    return _stage(problems * ev.sampling.n, length, f"problems x {ev.sampling.n}", rate,
                  n_units, gpus, startup(th, "evaluate", gpus), times)


def trial_costs(one: SweepConfig, chars: float, measured: Measured,
                times: int = 1) -> tuple[StageCost, StageCost]:
    """(training, evaluation) of one trial's configuration (`SweepConfig.for_trial`)."""
    return _train(one, chars, measured, times), _evaluate(one, measured, times)


def estimate(cfg: SweepConfig) -> CostEstimate:
    """The whole sweep's estimate. ValueError naming cost.calibrate_from when that summary
    cannot be read."""
    measured, chars = calibration(cfg), problem_chars(cfg)
    train, evaluate = {}, {}
    if cfg.search.proposes_while_running:  # proposals are not known: the base mix, n times each
        plans = [(s, s, {}, cfg.search.num_samples) for s in cfg.students]
    else:
        plans = [(t.name, t.student, t.params, 1) for t in cfg.trials()]
    for name, student, params, times in plans:
        train[name], evaluate[name] = trial_costs(cfg.for_trial(student, params), chars,
                                                  measured, times)
    models = {*(t.model for t in cfg.teachers.values() if t.model), *cfg.students}
    notes = [f"{m}: size unknown, so is its time" for m in sorted(models) if params_b(m) is None]
    if cfg.evaluate.judge is not None:
        notes.append("the judge's tokens are not counted (one short verdict per rejected answer)")
    generate = {label: generation_cost(cfg, label, measured) for label in cfg.teachers}
    # each student once before fine-tuning, on the trials' problems (mixray.sweep.baseline)
    baselines = {s: _evaluate(cfg.for_trial(s, {}), measured, 1) for s in cfg.students}
    return CostEstimate(generate, train, evaluate, notes, baselines)
