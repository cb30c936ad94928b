"""Evaluation: the generate stage's engines on held-out problems, scored like curation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq

from mixray.config import EvaluateConfig, SamplingConfig
from mixray.curate.stage import score
from mixray.evaluate.scoring import benchmark_metrics
from mixray.generate.stage import GenerationJob, run_generation

log = logging.getLogger(__name__)


def evaluate_model(
    model_dir: Path, problems: Path, cfg: EvaluateConfig, system_prompt: str, out_dir: Path,
    **placement,
) -> dict[str, float]:
    """Greedy answers to ``problems``; writes ``generations/``, ``scored.parquet``, ``metrics.json``."""
    job = GenerationJob(
        label="student",
        model_path=str(model_dir),
        prompt=cfg.prompt,
        system=system_prompt or None,
        sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0),
        batch_size=cfg.batch_size,
        replicas=cfg.replicas,
        **placement,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    run_generation(job, problems, out_dir / "generations")
    scored = score(pq.read_table(out_dir / "generations"))
    pq.write_table(scored, out_dir / "scored.parquet")
    m = benchmark_metrics(scored.to_pylist())
    metrics = {
        "eval_accuracy": m["accuracy"],
        "eval_accuracy_stderr": m["accuracy_stderr"],
        "eval_n": m["n_problems"],
        "eval_no_answer_rate": m["no_answer_rate"],
        "eval_truncation_rate": m["truncation_rate"],
        "eval_tokens_mean": m["response_tokens_mean"],
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("evaluate %s: accuracy %.3f ± %.3f on %d problems", model_dir, m["accuracy"],
             m["accuracy_stderr"], m["n_problems"])
    return metrics
