"""What every summary.json keeps, in one shape: the sweep's (written when the sweep ends, from
what it has in hand) and the report's (read back from MLflow).

``trials`` are rows of `trial_row` (the report's carry what MLflow adds under ``mlflow``).

``gaps`` (per student and pair of pools: the gap, the best mix against the best single source,
each with its paired test), ``points`` (the curve: one per share and point, seeds averaged),
``gains`` (each point against its student's base model), ``baselines`` and ``power``. Each test
is `Comparison`'s fields plus ``significant``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mixray.science.analysis import Baseline, Findings, GapRow, Trial
from mixray.science.significance import Comparison

# A trial's metrics in its summary row: what the table, the cost comparison (the times) and a
# resumed sweep (which reads them back from MLflow) need.
ROW_METRICS = ("mix_rows", "mix_pools_ran_dry", "train_loss", "eval_accuracy",
               "eval_accuracy_stderr", "eval_tokens_mean", "time_train_s", "time_eval_s")


def trial_row(name: str, student: str, params: dict[str, Any], long_share: float | None,
              metrics: dict[str, Any], value: float | None, *, error: str | None,
              stopped_early: bool, resumed: bool) -> dict[str, Any]:
    """One trial as every summary.json lists it (``value``: search.metric's)."""
    return ({"trial": name, "student": student, "params": params, "resumed": resumed,
             "error": error, "stopped_early": stopped_early}
            | {k: metrics.get(k) for k in ROW_METRICS} | {"value": value, "long_share": long_share})


def recorded_row(t: Trial) -> dict[str, Any]:
    """A trial read back from MLflow as a summary row, with what MLflow adds (its run, status,
    pools, schedule, per-benchmark accuracy); a KILLED run was stopped early."""
    return trial_row(t.name, t.student, t.params, t.share, t.metrics, t.value, error=t.error,
                     stopped_early=t.status == "KILLED", resumed=False) | {"mlflow": {
        "run_id": t.run_id, "status": t.status, "pools": list(t.pools), "schedule": t.schedule,
        "benchmarks": t.benchmarks, "seed": t.seed, "point": t.point}}


def comparison_record(test: Comparison | None) -> dict[str, Any] | None:
    return None if test is None else asdict(test) | {"significant": test.significant}


def gap_record(g: GapRow) -> dict[str, Any]:
    return {"student": g.student, "pools": list(g.pools), "name": g.gap_name, "gap": g.gap,
            "p_first": g.p_first, "p_second": g.p_second, "best_single": g.best_single,
            "best_mix_share": g.best_mix.share if g.best_mix else None,
            "best_mix_accuracy": g.best_mix.accuracy if g.best_mix else None,
            "best_mix_gain": g.mix_gain, "best_mix": g.best_mix.record() if g.best_mix else None,
            "gap_test": comparison_record(g.gap_test),
            "best_mix_test": comparison_record(g.mix_test)}


def findings_document(found: Findings, baselines: dict[str, Baseline]) -> dict[str, Any]:
    """The findings part of a summary.json."""
    return {
        "gaps": [gap_record(g) for g in found.gaps],
        "points": [p.record() for p in found.points],
        "gains": [{"student": g.point.student, "share": g.point.share, "point": g.point.point,
                   "base": g.base, "gain": g.gain, "test": comparison_record(g.test)}
                  for g in found.gains],
        "baselines": {k: {"accuracy": b.accuracy, "stderr": b.stderr}
                      for k, b in baselines.items()},
        "power": asdict(found.power) if found.power else None,
    }
