"""The evaluation stage: benchmarks -> one pass of the generate stage -> scores -> metrics.

Every benchmark's problems go through the generation stage (`mixray.generate.stage`, an actor
pool of the configured engine: hf, vllm or http), ``sampling.n`` completions each, in one pass, so
the
model loads once however many benchmarks there are. Completions are scored per benchmark
(`grading.grade.AnswerFormat`), answers math-verify rejects are optionally re-judged by an LLM
(`judge`), and the metrics come out per benchmark and as the paper's P.

What lands in ``out_dir``:
  benchmarks/<name>.parquet   each benchmark's problems, as loaded
  bad_rows.jsonl              records a benchmark could not use, each with its reason (if any)
  generation_inputs.parquet   one row per (benchmark, problem): the user turns generated from
  judge_inputs.parquet        the judge's prompts, when a judge is configured
  samples.parquet             per sample: problem, gold, completion, extracted answer, correct...
  metrics.json                per benchmark, the average over benchmarks, the flat metrics
  scores.json                 per benchmark, each problem's fraction of samples correct, in
                              problem order: what paired comparisons between trials pair on
  sample_completions.json     a few completions per benchmark (MLflow's table format)

Hub benchmarks are read through ``<root>/datasets`` (`HUB_CACHE_DIR`): `fetch_benchmarks` reads
each one there once, before a sweep's trials start, and every trial on any node reads that copy.

The generations (the model's, the judge's) are the generate stage's keyed outputs under ``root``
(`mixray.generate.stage.generate_cached`: ``<root>/artifacts/generate/<key>/``), keyed by
`evaluation_spec`: a killed evaluation rerun with the same root generates only the missing rows,
and one of anything else (another model, prompt, sampling or problem set) gets another key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mixray.artifacts import StageDir, spec_key
from mixray.evaluate.benchmarks import (
    DatasetBenchmark,
    LoadedBenchmark,
    ReasoningGymBenchmark,
    RegistryBenchmark,
    load_benchmark,
    read_problem_texts,
)
from mixray.evaluate.config import EvaluateConfig
from mixray.evaluate.judge import judge_prompt, parse_verdict
from mixray.evaluate.scoring import average_metrics, benchmark_metrics, metric_name
from mixray.generate import reasoning
from mixray.generate.config import ModelRun
from mixray.generate.job import Placement, model_job
from mixray.generate.stage import generate_cached, run_spec
from mixray.grading.grade import AnswerFormat, score_completion
from mixray.grading.verify import VERIFIER_VERSION
from mixray.problems.datasets import HUB_CACHE_DIR
from mixray.runroot import METRICS_FILE, SCORES_FILE

log = logging.getLogger(__name__)

SAMPLE_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("problem_id", pa.string()), ("sample_idx", pa.int32()),
    ("problem", pa.string()), ("answer", pa.string()), ("prompt", pa.string()),
    ("completion", pa.string()), ("extracted", pa.string()), ("verified", pa.bool_()),
    ("judge", pa.string()), ("correct", pa.bool_()), ("n_tokens", pa.int64()),
    ("finish_reason", pa.string()), ("error", pa.string()), ("gen_id", pa.string()),
    # a thinking model's lengths (generate.reasoning): null reasoning tokens where it does not
    # think or its engine cannot count them; reasoning_cut: it never closed its reasoning
    ("reasoning_tokens", pa.int64()), ("reasoning_cut", pa.bool_()),
])
TABLE_COLUMNS = ("benchmark", "problem_id", "problem", "answer", "completion", "extracted",
                 "correct", "judge", "finish_reason", "n_tokens")
TABLE_TEXT_CHARS = {"problem": 1000, "completion": 4000}  # keep the artifact readable


def load_benchmarks(cfg: EvaluateConfig, heldout: Path | None = None,
                    exclude_problems: Path | None = None, *,
                    cache: Path | None = None) -> list[LoadedBenchmark]:
    """Load every benchmark of ``cfg``; raises ValueError naming the first one that fails.

    ``exclude_problems`` (training problems) keeps reasoning-gym sets disjoint from them;
    ``cache`` is where hub datasets are read through (None: from the hub each time).
    """
    needs_exclusion = any(isinstance(b, ReasoningGymBenchmark) for b in cfg.benchmarks)
    exclude = read_problem_texts(exclude_problems) if exclude_problems and needs_exclusion \
        else set()
    return [load_benchmark(spec, heldout=heldout, exclude=exclude, cache=cache)
            for spec in cfg.benchmarks]


def fetch_benchmarks(cfg: EvaluateConfig, root: Path) -> list[str]:
    """Read every hub benchmark of ``cfg`` into ``<root>/datasets`` once; returns their names
    (fetched now or already there). The sweep driver calls it before trials start, so trials
    on worker nodes read the run root's copy instead of each downloading from the hub. Each is
    loaded whole (fields, expected size), so a broken benchmark fails here, before any training.
    """
    cache = root / HUB_CACHE_DIR
    names = []
    for spec in cfg.benchmarks:
        resolved = spec.resolve() if isinstance(spec, RegistryBenchmark) else spec
        if isinstance(resolved, DatasetBenchmark) and resolved.path.startswith("hf:"):
            load_benchmark(resolved, cache=cache)
            names.append(resolved.name)
    if names:
        log.info("evaluate: hub benchmarks %s in %s", ", ".join(names), cache)
    return names


def evaluate_model(
    model_dir: Path, problems: Path | None, cfg: EvaluateConfig, system_prompt: str | None,
    out_dir: Path, *, root: Path, exclude_problems: Path | None = None,
    placement: Placement = Placement(),
) -> dict[str, float]:
    """Evaluate the model in ``model_dir`` on ``cfg.benchmarks``; returns the flat metrics.

    ``problems`` is the sweep's held-out set (what a ``heldout`` benchmark means); by default
    its sibling ``train.parquet``, when there is one, is what reasoning-gym sets must avoid.
    The generations are cached under ``root`` (a sweep's run root), and hub benchmarks are read
    through ``root/datasets``; ``placement`` goes to the generation actors. The returned
    keys: ``eval_accuracy`` (the paper's P: one benchmark's accuracy, or the unweighted mean),
    ``eval_accuracy_stderr``, ``eval_n`` (problems), ``eval_samples``, ``eval_no_answer_rate``,
    ``eval_truncation_rate``, ``eval_error_rate``, ``eval_tokens_mean`` (rates and lengths
    averaged over benchmarks like P), ``eval_bad_rows``, the judge's counts when it ran, and
    ``eval.<benchmark>.<metric>`` for every per-benchmark metric (``pass@k`` as ``pass_at_k``).
    """
    if exclude_problems is None and problems is not None:
        sibling = Path(problems).parent / "train.parquet"
        exclude_problems = sibling if sibling.is_file() else None
    benchmarks = load_benchmarks(cfg, problems, exclude_problems, cache=root / HUB_CACHE_DIR)
    return run_evaluation(model_dir, benchmarks, cfg, system_prompt, out_dir, root=root,
                          placement=placement)


def run_evaluation(
    model_dir: Path | None, benchmarks: Sequence[LoadedBenchmark], cfg: EvaluateConfig,
    system_prompt: str | None, out_dir: Path, *, root: Path, judge_model_dir: Path | None = None,
    placement: Placement = Placement(),
) -> dict[str, float]:
    """Generate, score and summarise already loaded benchmarks (Ray must be connected), the
    generations cached under ``root``. ``model_dir`` is None when the model is served
    (``cfg.engine`` is http)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_benchmarks(benchmarks, out_dir)
    inputs = _generation_inputs(benchmarks, cfg)
    rows = [{"problem_id": r["gen_pid"], "problem": r["prompt"], "answer": r["answer"]}
            for r in inputs]
    log.info("evaluate: %d benchmarks, %d problems x %d samples", len(benchmarks), len(inputs),
             cfg.sampling.n)
    # The user turn is already formatted per benchmark (GSM8K takes the raw question), so the
    # job's template only passes it through.
    gen, gen_stats = _generate("eval", cfg, model_dir, system_prompt or None, rows,
                               out_dir / "generation_inputs.parquet", root, placement)
    generated = {(r["problem_id"], r["sample_idx"]): r
                 for r in pq.read_table(gen.path / "data").to_pylist()}
    formats = {b.name: b.answer_format for b in benchmarks}
    samples = []
    for row in inputs:
        for s in range(cfg.sampling.n):
            out = generated.get((row["gen_pid"], s))
            if out is None:
                raise RuntimeError(f"generation left sample {s} of {row['gen_pid']} without output")
            samples.append(_scored(row, s, out, formats[row["benchmark"]]))
    judged = cfg.judge is not None
    if cfg.judge is not None:
        if judge_model_dir is None and cfg.judge.model is not None:
            from mixray import models

            # on whichever node runs the trial: placed in the run root (by the sweep, first)
            judge_model_dir = models.resolve(cfg.judge.model, into=models.in_run_root(root))
        _judge(samples, formats, cfg, judge_model_dir, out_dir, root, placement)
    pq.write_table(pa.Table.from_pylist(samples, SAMPLE_SCHEMA), out_dir / "samples.parquet")

    per_benchmark = {b.name: _benchmark_summary(b, samples, cfg.pass_ks, judged)
                     for b in benchmarks}
    average = average_metrics(per_benchmark)
    flat = flat_metrics(per_benchmark, average, judged)
    report = {"model": str(model_dir), "verifier": VERIFIER_VERSION,
              "sources": {b.name: b.source for b in benchmarks},
              "benchmarks": per_benchmark, "average": average, "metrics": flat,
              "generations": str(gen.path), "generation": gen_stats}
    (out_dir / METRICS_FILE).write_text(json.dumps(report, indent=2))
    (out_dir / SCORES_FILE).write_text(json.dumps(problem_scores(samples, benchmarks)))
    (out_dir / "sample_completions.json").write_text(
        json.dumps(sample_table(samples, benchmarks, cfg.samples_to_log), indent=2))
    for name, m in per_benchmark.items():
        log.info("evaluate[%s]: accuracy %.3f ± %.3f on %d problems x %d samples", name,
                 m["accuracy"], m["accuracy_stderr"], m["n_problems"],
                 m["n_samples"] // m["n_problems"])
    log.info("evaluate %s: P = %.3f ± %.3f over %d benchmark(s)",
             model_dir or f"{cfg.engine.model} at {cfg.engine.base_url}", average["accuracy"],
             average["accuracy_stderr"], len(per_benchmark))
    return flat


def _write_benchmarks(benchmarks: Sequence[LoadedBenchmark], out_dir: Path) -> None:
    folder = out_dir / "benchmarks"
    folder.mkdir(exist_ok=True)
    for b in benchmarks:
        pq.write_table(pa.Table.from_pylist(b.rows, pa.schema(
            [("problem_id", pa.string()), ("problem", pa.string()), ("answer", pa.string())])),
            folder / f"{b.name}.parquet")
    bad = [row for b in benchmarks for row in b.bad_rows]
    bad_path = out_dir / "bad_rows.jsonl"
    if bad:
        bad_path.write_text("".join(json.dumps(row) + "\n" for row in bad))
    elif bad_path.exists():
        bad_path.unlink()  # left by an earlier run over other data


def _generation_inputs(benchmarks: Sequence[LoadedBenchmark],
                       cfg: EvaluateConfig) -> list[dict[str, Any]]:
    """One row per (benchmark, problem); the generation stage samples each n times. The
    generation's problem id names the benchmark and the problem's position, never the problem's
    own id: ids of different benchmarks may collide, and they may hold any character."""
    rows = []
    for b in benchmarks:
        template = b.prompt or cfg.prompt
        for i, problem in enumerate(b.rows):
            rows.append({"gen_pid": f"{b.name}/{i}", "benchmark": b.name,
                         "problem_id": problem["problem_id"], "problem": problem["problem"],
                         "answer": problem["answer"],
                         "prompt": template.format(problem=problem["problem"])})
    return rows


def _fingerprint(model_dir: Path) -> list[list[Any]]:
    """Name, size and mtime of the weight files: a retrained model at the same path differs."""
    files = sorted([*model_dir.glob("*.safetensors"), *model_dir.glob("*.bin")])
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def evaluation_spec(label: str, run: ModelRun, model_dir: Path | None, system: str | None,
                    rows: Sequence[dict[str, str]]) -> dict[str, Any]:
    """The key of an evaluation's (or its judge's) generations: the weights (a served model
    has none: its engine settings name it), engine, system turn, sampling and the inputs."""
    model = None if model_dir is None else {"path": str(model_dir),
                                            "weights": _fingerprint(Path(model_dir))}
    inputs = spec_key({"rows": [[r["problem_id"], r["problem"], r["answer"]] for r in rows]})
    return run_spec(label, run, model, "{problem}", system, inputs)


def _generate(label: str, run: ModelRun, model_dir: Path | None, system: str | None,
              rows: list[dict[str, str]], inputs_path: Path, root: Path,
              placement: Placement) -> tuple[StageDir, dict[str, float]]:
    """``rows`` (problem_id, problem: the user turn, answer) through the generate stage's cache;
    returns where the generations lie and the stats of the run that finished them."""
    pq.write_table(pa.Table.from_pylist(rows, pa.schema(
        [("problem_id", pa.string()), ("problem", pa.string()), ("answer", pa.string())])),
        inputs_path)
    job = model_job(run, label, model_dir, "{problem}", system, placement)
    stage, stats = generate_cached(job, evaluation_spec(label, run, model_dir, system, rows),
                                   inputs_path, root, failed_rows="retried")
    return stage, stats or json.loads((stage.path / "stats.json").read_text())


def _scored(row: dict[str, Any], sample_idx: int, generated: dict[str, Any],
            answer_format: AnswerFormat) -> dict[str, Any]:
    completion = generated["completion"] or ""
    answer, finish = reasoning.graded(generated)  # the answer part; unclosed reasoning: length
    if finish == "error":
        extracted, verified, verified_by = None, False, None
    else:
        extracted, verified, verified_by = score_completion(answer, row["answer"], answer_format)
    return row | {"sample_idx": sample_idx, "gen_id": f"{row['gen_pid']}/{sample_idx}",
                  "completion": completion, "extracted": extracted, "verified": verified,
                  "verified_by": verified_by,
                  "judge": None, "correct": verified, "n_tokens": generated["n_tokens"],
                  "finish_reason": finish, "error": generated["error"],
                  "reasoning_tokens": generated.get("reasoning_tokens"),
                  "reasoning_cut": "response" in generated and generated["response"] is None
                  and finish != "error"}


def judge_candidates(samples: Sequence[dict[str, Any]], formats: dict[str, AnswerFormat]
                     ) -> list[dict[str, Any]]:
    """Samples the judge looks at: an answer was extracted and math-verify rejected it."""
    return [s for s in samples if s["extracted"] and not s["verified"]
            and s["finish_reason"] != "error" and formats[s["benchmark"]] != "last_number"]


def apply_verdicts(candidates: Sequence[dict[str, Any]], verdicts: dict[str, str]) -> None:
    """Record each candidate's verdict; only a clear True makes a sample correct."""
    for s in candidates:
        s["judge"] = verdicts[s["gen_id"]]
        s["correct"] = s["verified"] or s["judge"] == "true"


def _judge(samples: list[dict[str, Any]], formats: dict[str, AnswerFormat], cfg: EvaluateConfig,
           judge_model_dir: Path | None, out_dir: Path, root: Path,
           placement: Placement) -> None:
    """Judge the candidates through the generation stage (``judge_model_dir`` is None for an
    http judge) and record the verdicts in ``samples``. Past the judge's max_error_rate the
    evaluation fails rather than count its failures undecided."""
    judge = cfg.judge
    assert judge is not None
    candidates = judge_candidates(samples, formats)
    log.info("judge: %d of %d samples have an answer math-verify rejected", len(candidates),
             len(samples))
    if not candidates:
        return
    rows = [{"problem_id": s["gen_id"], "answer": "",
             "problem": judge_prompt(judge.prompt, s["problem"], s["answer"], s["extracted"])}
            for s in candidates]
    stage, _ = _generate("judge", judge, judge_model_dir, judge.system_prompt, rows,
                         out_dir / "judge_inputs.parquet", root, placement)
    verdicts = {r["problem_id"]: parse_verdict(reasoning.graded(r)[0]) if r["error"] is None
                else "undecided" for r in pq.read_table(stage.path / "data").to_pylist()}
    apply_verdicts(candidates, verdicts)


def problem_scores(samples: Sequence[dict[str, Any]], benchmarks: Sequence[LoadedBenchmark]
                   ) -> dict[str, dict[str, list[float]]]:
    """Each benchmark's per-problem fraction of samples correct, in the benchmark's own order:
    every trial of a sweep answers the same problems in that order, so two trials' lists pair
    problem by problem (mixray.science.significance.Scores)."""
    correct: dict[str, list[int]] = {}
    for s in samples:
        correct.setdefault(s["gen_pid"], []).append(bool(s["correct"]))
    return {"benchmarks": {b.name: [sum(c) / len(c) for c in (
        correct[f"{b.name}/{i}"] for i in range(len(b.rows)))] for b in benchmarks}}


def _benchmark_summary(b: LoadedBenchmark, samples: Sequence[dict[str, Any]], ks: Sequence[int],
                       judged: bool) -> dict[str, float]:
    rows = [s for s in samples if s["benchmark"] == b.name]
    m = benchmark_metrics(rows, ks)
    m["bad_rows"] = len(b.bad_rows)
    if judged:
        verdicts = [s["judge"] for s in rows if s["judge"] is not None]
        m |= {"judge_checked": len(verdicts), "judge_true": verdicts.count("true"),
              "judge_false": verdicts.count("false"),
              "judge_undecided": verdicts.count("undecided")}
    return m


def flat_metrics(per_benchmark: dict[str, dict[str, float]], average: dict[str, float],
                 judged: bool) -> dict[str, float]:
    """The metrics a sweep trial reports (and MLflow logs): headline keys, then per benchmark."""
    total = lambda key: sum(m[key] for m in per_benchmark.values())  # noqa: E731
    flat: dict[str, float] = {
        "eval_accuracy": average["accuracy"],
        "eval_accuracy_stderr": average["accuracy_stderr"],
        "eval_n": total("n_problems"),
        "eval_samples": total("n_samples"),
        "eval_no_answer_rate": average["no_answer_rate"],
        "eval_truncation_rate": average["truncation_rate"],
        "eval_error_rate": average["error_rate"],
        "eval_tokens_mean": average["response_tokens_mean"],
        "eval_bad_rows": total("bad_rows"),
    }
    for key in ("reasoning_tokens_mean", "reasoning_cut_rate"):  # a thinking model's
        if key in average:
            flat[f"eval_{key}"] = average[key]
    if judged:
        for key in ("judge_checked", "judge_true", "judge_false", "judge_undecided"):
            flat[f"eval_{key}"] = total(key)
    for name, m in per_benchmark.items():
        flat |= {f"eval.{name}.{metric_name(k)}": v for k, v in m.items()}
    return flat


def sample_table(samples: Sequence[dict[str, Any]], benchmarks: Sequence[LoadedBenchmark],
                 per_benchmark: int) -> dict[str, list]:
    """The first ``per_benchmark`` problems of each benchmark, sample 0, as MLflow's table
    format ({"columns": [...], "data": [[...], ...]})."""
    data = []
    for b in benchmarks:
        first = {p["problem_id"] for p in b.rows[:per_benchmark]}
        for s in samples:
            if s["benchmark"] == b.name and s["sample_idx"] == 0 and s["problem_id"] in first:
                data.append([_clip(c, s[c]) for c in TABLE_COLUMNS])
    return {"columns": list(TABLE_COLUMNS), "data": data}


def _clip(column: str, value: Any) -> Any:
    limit = TABLE_TEXT_CHARS.get(column)
    if limit and isinstance(value, str) and len(value) > limit:
        return value[:limit] + " [...]"
    return value
