"""The findings as every summary.json keeps them: one shape for the sweep's summary (written when
the sweep ends, from what it has in hand) and the report's (read back from MLflow).

``gaps`` (per student and pair of pools: the gap, the best mix against the best single source,
each with its paired test), ``points`` (the curve: one per share and point, seeds averaged),
``gains`` (each point against its student's base model), ``baselines`` and ``power``. Each test
is `Comparison`'s fields plus ``significant``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mixray.science.analysis import Baseline, Findings, GapRow
from mixray.science.significance import Comparison


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
