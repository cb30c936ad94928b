"""Score a generation output and keep the correct rows: ``scored.parquet``, ``pool.parquet``,
``stats.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixray import metrics
from mixray.artifacts import StageDir
from mixray.curate.config import CurateConfig
from mixray.generate import reasoning
from mixray.grading.grade import score_completion
from mixray.grading.rates import sample_rates
from mixray.grading.verify import VERIFIER_VERSION

log = logging.getLogger(__name__)
NEEDED = ("problem_id", "sample_idx", "answer", "completion", "n_tokens", "finish_reason")
# Bump when curation writes something else for the same generation and policy: which rows enter
# a pool (never a row the engine failed on, even with keep "all"), the columns, the stats.
# 2: rows in (problem_id, sample_idx) order, not in the order generation's batches finished.
CURATION_VERSION = 2


def in_row_order(table: pa.Table) -> pa.Table:
    """The generation's rows sorted by (problem_id, sample_idx). Its parts arrive in the order
    Ray Data finished their batches, which differs from run to run (seen: a pool starting at
    problem 20), and the mix draws rows by position: unsorted, the same sweep regenerated from
    scratch would train on other rows."""
    return table.sort_by([("problem_id", "ascending"), ("sample_idx", "ascending")])


def score(table: pa.Table) -> pa.Table:
    """Add ``extracted``, ``correct`` and ``verified_by`` columns to a generation table, each
    completion graded ``lenient`` (`grading.grade.score_completion`); ``verified_by`` is how the
    answer was compared (``grading.verify.Check``), null when it was not."""
    missing = [c for c in NEEDED if c not in table.column_names]
    if missing:
        raise ValueError(f"generation output lacks columns {missing}; has {table.column_names}")
    # the answer part only, with unclosed reasoning counted as truncated (generate.reasoning)
    answers = [reasoning.graded(row) for row in table.select(
        [c for c in (*NEEDED, "response") if c in table.column_names]).to_pylist()]
    table = table.set_column(table.schema.get_field_index("finish_reason"), "finish_reason",
                             pa.array([r for _, r in answers], pa.string()))
    golds = table["answer"].to_pylist()
    graded = [score_completion(a, g, "lenient")
              for (a, _), g in zip(answers, golds, strict=True)]
    return (table.append_column("extracted", pa.array([e for e, _, _ in graded], pa.string()))
            .append_column("correct", pa.array([ok for _, ok, _ in graded], pa.bool_()))
            .append_column("verified_by", pa.array([by for _, _, by in graded], pa.string())))


def stats(scored: pa.Table) -> dict[str, float]:
    """Acceptance, no-answer, truncation and error rates, and token lengths of a scored table.

    Rates count rows, i.e. (problem, sample) pairs; ``problems_solved`` counts the problems with
    at least one accepted sample (with several samples per problem, what a per-problem mix can
    draw on); ``string_fallback`` counts the answers compared as text because math-verify could
    not parse them or their gold."""
    n = scored.num_rows
    if n == 0:
        raise ValueError("no generated rows to curate")
    reasons = scored["finish_reason"].to_pylist()
    tokens = scored["n_tokens"].to_numpy()
    accepted = int(pc.sum(scored["correct"]).as_py() or 0)
    problems = pc.count_distinct(scored["problem_id"]).as_py()
    solved = pc.count_distinct(scored.filter(scored["correct"])["problem_id"]).as_py()
    fallback = scored["verified_by"].to_pylist().count("string")
    return {
        "rows": n,
        "problems": problems,
        "problems_solved": solved,
        "accepted": accepted,
        "acceptance_rate": accepted / n,
        # no_answer_rate, truncation_rate, error_rate; a failed row counts as no answer here
        **sample_rates(scored["extracted"].to_pylist(), reasons),
        "string_fallback": fallback,
        "string_fallback_rate": fallback / n,
        "tokens_mean": float(np.mean(tokens)),
        "tokens_p50": float(np.percentile(tokens, 50)),
        "tokens_p90": float(np.percentile(tokens, 90)),
    }


def _teacher(table: pa.Table) -> str:
    """The label generation wrote in every row of its output (its job's); "" when absent."""
    if "teacher" not in table.column_names or table.num_rows == 0:
        return ""
    return str(table["teacher"][0].as_py())


def curate_stage(generation: StageDir, cfg: CurateConfig, run_root: Path) -> StageDir:
    spec = {"version": CURATION_VERSION, "generation": generation.key,
            "verifier": VERIFIER_VERSION, "keep": cfg.keep}
    return StageDir(run_root, "curate", spec)


def curate(
    generation: StageDir, cfg: CurateConfig, run_root: Path
) -> tuple[StageDir, dict[str, float], bool]:
    """Score every row, keep the pool per `cfg.keep`; returns (where, stats, reused_from_cache)."""
    stage = curate_stage(generation, cfg, run_root)
    if stage.is_committed():
        return stage, json.loads((stage.path / "stats.json").read_text()), True
    scored = in_row_order(score(pq.read_table(generation.path / "data")))
    s = stats(scored)
    tmp = stage.staging()
    pq.write_table(scored, tmp / "scored.parquet")
    generated = scored.filter(pc.not_equal(scored["finish_reason"], "error"))
    pool = generated if cfg.keep == "all" else generated.filter(generated["correct"])
    pq.write_table(pool, tmp / "pool.parquet")
    (tmp / "stats.json").write_text(json.dumps(s, indent=2))
    stage.commit(tmp)
    metrics.record_curation(_teacher(scored), rows=s["rows"], accepted=s["accepted"])
    log.info("curate: %d of %d rows correct (%.0f%%), pool keeps %d", s["accepted"], s["rows"],
             100 * s["acceptance_rate"], pool.num_rows)
    return stage, s, False
