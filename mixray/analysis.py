"""The science of a sweep's report: learnability gaps, Mix Distillation curves and best mixes.

Pure functions over plain records (PAPER.md's quantities): no MLflow, no plotting. The records
are filled in by `mixray.tracking.load_sweep_record` and drawn by `mixray.report_figures` and
`mixray.report_html`.

- ΔLong = P(long only) − P(short only) and, when the sweep mixes teachers labelled
  ``large``/``small``, ΔLarge; P is a student's eval accuracy after training on one source only;
- the best mix (0 < share < 1) against the best single source;
- only finished trials with an accuracy and a share count (`Trial.usable`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mixray.evaluate.scoring import mean_and_stderr

GAP_NAMES = {("long", "short"): "ΔLong", ("large", "small"): "ΔLarge"}


@dataclass(frozen=True)
class Trial:
    """One child run. ``share`` is the share of ``pools[0]`` in the mix (param ``long_share``)."""

    run_id: str
    name: str
    status: str
    student: str
    share: float | None
    pools: tuple[str, str]
    schedule: str | None
    accuracy: float | None
    stderr: float | None
    train_loss: float | None
    loss_curve: tuple[tuple[int, float], ...]
    benchmarks: dict[str, tuple[float, float | None]]
    data_card: dict[str, Any] | None
    error: str | None

    @property
    def usable(self) -> bool:
        """Whether the trial enters the curves and gap tables."""
        return self.status == "FINISHED" and self.accuracy is not None and self.share is not None


@dataclass(frozen=True)
class SweepRecord:
    """The parent run of one invocation and its trials."""

    experiment: str
    tracking_uri: str
    parent_id: str
    parent_name: str
    parent_status: str
    started: str
    teachers: tuple[str, ...]
    curate: dict[str, dict[str, float]]
    trials: list[Trial]


@dataclass(frozen=True)
class Point:
    """Finished trials with the same student, pools, schedule and share, averaged."""

    student: str
    pools: tuple[str, str]
    schedule: str | None
    share: float
    accuracy: float
    stderr: float | None
    n: int
    trials: tuple[str, ...]


@dataclass(frozen=True)
class GapRow:
    """One student's gap over one pair of pools, and its best mix against the single sources."""

    student: str
    pools: tuple[str, str]
    gap_name: str
    p_first: float | None
    p_second: float | None
    gap: float | None
    best_mix: Point | None
    best_single: float | None
    mix_gain: float | None


def trial_accuracy(metrics: dict[str, float],
                   benchmarks: dict[str, tuple[float, float | None]]) -> float | None:
    """``eval_accuracy``, else the paper's P: the unweighted mean over benchmarks."""
    if "eval_accuracy" in metrics:
        return metrics["eval_accuracy"]
    if benchmarks:
        return math.fsum(acc for acc, _ in benchmarks.values()) / len(benchmarks)
    return None


def _mean_and_stderr(members: Sequence[Trial]) -> tuple[float, float | None]:
    """One trial: its logged stderr. Repeats: the standard error of their mean."""
    scored = [t for t in members if t.accuracy is not None]
    if len(scored) == 1:
        return scored[0].accuracy, scored[0].stderr
    return mean_and_stderr([t.accuracy for t in scored])


def curve_points(trials: Iterable[Trial]) -> list[Point]:
    """Finished trials grouped into the points of the Mix Distillation curves."""
    groups: dict[tuple[str, tuple[str, str], str | None, float], list[Trial]] = defaultdict(list)
    for t in trials:
        if t.usable:
            groups[(t.student, t.pools, t.schedule, t.share)].append(t)
    points = []
    for (student, pools, schedule, share), members in groups.items():
        acc, se = _mean_and_stderr(members)
        points.append(Point(student, pools, schedule, share, acc, se, len(members),
                            tuple(t.name for t in members)))
    return sorted(points, key=lambda p: (p.student, p.pools, p.schedule or "", p.share))


def _endpoint(points: Sequence[Point], share: float) -> float | None:
    """Accuracy of a single-source mix (share 0 or 1), pooled over schedules."""
    at = [p for p in points if p.share == share]
    if not at:
        return None
    return math.fsum(p.accuracy * p.n for p in at) / sum(p.n for p in at)


def gap_name(pools: tuple[str, str]) -> str:
    return GAP_NAMES.get(pools, f"Δ({pools[0]}−{pools[1]})")


def gap_rows(points: Sequence[Point]) -> list[GapRow]:
    """Per student and pair of pools: P(first only), P(second only), the gap, the best mix."""
    by: dict[tuple[str, tuple[str, str]], list[Point]] = defaultdict(list)
    for p in points:
        by[(p.student, p.pools)].append(p)
    rows = []
    for (student, pools), pts in sorted(by.items()):
        first, second = _endpoint(pts, 1.0), _endpoint(pts, 0.0)
        mixes = [p for p in pts if 0.0 < p.share < 1.0]
        best = max(mixes, key=lambda p: p.accuracy) if mixes else None
        singles = [v for v in (first, second) if v is not None]
        best_single = max(singles) if singles else None
        gain = best.accuracy - best_single if best and best_single is not None else None
        gap = first - second if first is not None and second is not None else None
        rows.append(GapRow(student, pools, gap_name(pools), first, second, gap, best,
                           best_single, gain))
    return rows
