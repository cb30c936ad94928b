"""The science of a sweep's report: learnability gaps, Mix Distillation curves and best mixes,
each difference with a paired interval, the gain over each student's base model, and what the
evaluation could have detected.

Pure functions over plain records (PAPER.md's quantities): no MLflow, no plotting. The records
are filled in by `mixray.tracking.records.load_sweep_record` (or the sweep's own rows) and drawn
by `mixray.report.figures` and `mixray.report.html`.

- ΔLong = P(long only) − P(short only) and, when the sweep mixes teachers labelled
  ``large``/``small``, ΔLarge; P is a student's eval accuracy after training on one source only
  (the best point at that share by ``search.metric``/``mode`` when other axes vary);
- the best mix (0 < share < 1, best by ``search.metric``/``mode``) against the best single source;
- a point is a trial's search values less its seed: repeats over ``search.seeds`` average into one
  point, with the spread over seeds and the evaluations' own error kept apart;
- every difference between two points of one student is paired on the same problems
  (`mixray.science.significance.paired_difference`), when the trials' per-problem scores are known;
- only finished trials with an accuracy and a share count (`Trial.usable`).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mixray.science.config import AnalysisConfig
from mixray.science.significance import (
    Comparison,
    Scores,
    detectable_difference,
    effective_problems,
    mean_and_stderr,
    paired_difference,
    problems_needed,
)

log = logging.getLogger(__name__)
GAP_NAMES = {("long", "short"): "ΔLong", ("large", "small"): "ΔLarge"}
Mode = Literal["min", "max"]
DEFAULTS = AnalysisConfig()  # frozen: one shared default


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
    seed: int | None = None  # search.seeds: the replicate this trial is
    point: str = ""  # its other search values (not the share, not the seed), as text
    value: float | None = None  # search.metric's value; None: not logged
    scores: Scores | None = None  # per-problem scores of its evaluation; None: unknown
    params: dict[str, Any] = field(default_factory=dict)  # its search values
    metrics: dict[str, float] = field(default_factory=dict)  # its run's last value of each

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
    baselines: dict[str, Baseline] = field(default_factory=dict)  # student -> its base model
    metric: str = "eval_accuracy"  # search.metric: what "best" means
    mode: Mode = "max"
    analysis: AnalysisConfig = DEFAULTS
    samples: int = 1  # evaluate.sampling.n: samples per problem


@dataclass(frozen=True)
class Baseline:
    """A student evaluated before any fine-tuning, on the trials' problems."""

    student: str
    accuracy: float
    stderr: float | None
    scores: Scores | None


@dataclass(frozen=True)
class Point:
    """Finished trials with the same student, pools, schedule, share and other search values:
    one trial, or its repeats over seeds, averaged. ``stderr`` is the error of ``accuracy``:
    the spread over seeds (``seed_stderr``) and the evaluations' own error over problems and
    samples (``sampling_stderr``) combined."""

    student: str
    pools: tuple[str, str]
    schedule: str | None
    share: float
    accuracy: float
    stderr: float | None
    n: int
    trials: tuple[str, ...]
    point: str = ""
    value: float | None = None  # search.metric, averaged like accuracy
    seed_stderr: float | None = None  # None: one seed
    sampling_stderr: float | None = None
    scores: tuple[Scores, ...] = ()  # one per trial; () when one of them is unknown

    def record(self) -> dict[str, Any]:
        """The point as summary.json keeps it: everything but the per-problem scores."""
        return {k: v for k, v in asdict(self).items() if k != "scores"}


@dataclass(frozen=True)
class GapRow:
    """One student's gap over one pair of pools, and its best mix against the single sources;
    ``*_test`` are the paired comparisons (None: per-problem scores unknown)."""

    student: str
    pools: tuple[str, str]
    gap_name: str
    p_first: float | None
    p_second: float | None
    gap: float | None
    best_mix: Point | None
    best_single: float | None
    mix_gain: float | None
    gap_test: Comparison | None = None
    mix_test: Comparison | None = None


@dataclass(frozen=True)
class Gain:
    """A point against its student's base model (evaluated before any fine-tuning)."""

    point: Point
    base: float
    gain: float
    test: Comparison | None


@dataclass(frozen=True)
class Power:
    """What the evaluation could detect: ``detectable`` is the smallest true difference found
    with ``power`` at level ``alpha``; ``needed`` the problems that would detect ``detect``."""

    n_problems: int
    samples: int
    seeds: int
    accuracy: float
    detectable: float
    detect: float
    needed: int
    basis: str  # where the error came from: an observed comparison, or the unpaired bound


def trial_accuracy(metrics: dict[str, float],
                   benchmarks: dict[str, tuple[float, float | None]]) -> float | None:
    """``eval_accuracy``, else the paper's P: the unweighted mean over benchmarks."""
    if "eval_accuracy" in metrics:
        return metrics["eval_accuracy"]
    if benchmarks:
        return math.fsum(acc for acc, _ in benchmarks.values()) / len(benchmarks)
    return None


def _known(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _value(t: Trial, metric: str) -> float | None:
    """The search metric of a trial; eval_accuracy is its accuracy (P) when not logged apart."""
    return t.value if t.value is not None else t.accuracy if metric == "eval_accuracy" else None


def _point(members: Sequence[Trial], metric: str) -> Point:
    first = members[0]
    accs = [t.accuracy for t in members]
    accuracy = math.fsum(accs) / len(accs)
    errors = [t.stderr for t in members if _known(t.stderr)]
    # Every seed answers the same problems: their errors over problems do not average away, so
    # the evaluations' own error of the mean is that of one of them (their mean), not /sqrt(k).
    sampling = math.fsum(errors) / len(errors) if errors else None
    seed_se = mean_and_stderr(accs)[1] if len(members) > 1 else None
    parts = [e for e in (seed_se, sampling) if _known(e)]
    values = [_value(t, metric) for t in members]
    return Point(first.student, first.pools, first.schedule, first.share, accuracy,
                 math.sqrt(math.fsum(e * e for e in parts)) if parts else None, len(members),
                 tuple(t.name for t in members), first.point,
                 math.fsum(values) / len(values) if None not in values else None,
                 seed_se, sampling,
                 tuple(t.scores for t in members) if all(t.scores for t in members) else ())


def curve_points(trials: Iterable[Trial], metric: str = "eval_accuracy") -> list[Point]:
    """Finished trials grouped into the points of the Mix Distillation curves."""
    groups: dict[tuple[Any, ...], list[Trial]] = defaultdict(list)
    for t in trials:
        if t.usable:
            groups[(t.student, t.pools, t.schedule, t.share, t.point)].append(t)
    points = [_point(sorted(members, key=lambda t: t.name), metric)
              for members in groups.values()]
    return sorted(points, key=lambda p: (p.student, p.pools, p.schedule or "", p.share, p.point))


def best(points: Iterable[Point], mode: Mode) -> Point | None:
    """The best point by the search metric (`search.mode`); points without it never win."""
    scored = [p for p in points if p.value is not None]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda p: p.value)


def compare(a: Point | None, b: Point | None, cfg: AnalysisConfig) -> Comparison | None:
    """a − b paired on the same problems, or None when either side's scores are unknown."""
    if a is None or b is None or not a.scores or not b.scores:
        return None
    return _paired(a.scores, b.scores, cfg, f"{a.trials[0]} vs {b.trials[0]}")


def _paired(a: Sequence[Scores], b: Sequence[Scores], cfg: AnalysisConfig,
            what: str) -> Comparison | None:
    """The paired test, or None (logged) when the two were not evaluated on the same problems:
    a searched evaluate.* axis can give trials different benchmarks, and there is no pairing."""
    try:
        return paired_difference(a, b, resamples=cfg.resamples, seed=cfg.seed, level=cfg.level)
    except ValueError as e:
        log.warning("no paired comparison of %s: %s", what, e)
        return None


def gap_name(pools: tuple[str, str]) -> str:
    return GAP_NAMES.get(pools, f"Δ({pools[0]}−{pools[1]})")


def gap_rows(points: Sequence[Point], mode: Mode = "max",
             cfg: AnalysisConfig = DEFAULTS) -> list[GapRow]:
    """Per student and pair of pools: P(first only), P(second only), the gap, the best mix."""
    by: dict[tuple[str, tuple[str, str]], list[Point]] = defaultdict(list)
    for p in points:
        by[(p.student, p.pools)].append(p)
    rows = []
    for (student, pools), pts in sorted(by.items()):
        first = best([p for p in pts if p.share == 1.0], mode)
        second = best([p for p in pts if p.share == 0.0], mode)
        mix = best([p for p in pts if 0.0 < p.share < 1.0], mode)
        single = best([p for p in (first, second) if p is not None], mode)
        rows.append(GapRow(
            student, pools, gap_name(pools), _acc(first), _acc(second),
            first.accuracy - second.accuracy if first and second else None, mix, _acc(single),
            mix.accuracy - single.accuracy if mix and single else None,
            compare(first, second, cfg), compare(mix, single, cfg)))
    return rows


def _acc(p: Point | None) -> float | None:
    return None if p is None else p.accuracy


def gains(points: Sequence[Point], baselines: dict[str, Baseline],
          cfg: AnalysisConfig = DEFAULTS) -> list[Gain]:
    """Each point against its student's base model (points of students without one: none)."""
    out = []
    for p in points:
        base = baselines.get(p.student)
        if base is None:
            continue
        test = None
        if p.scores and base.scores is not None:
            test = _paired(p.scores, [base.scores], cfg, f"{p.trials[0]} vs its base model")
        out.append(Gain(p, base.accuracy, p.accuracy - base.accuracy, test))
    return out


def power(points: Sequence[Point], rows: Sequence[GapRow], samples: int,
          cfg: AnalysisConfig = DEFAULTS) -> Power | None:
    """What this sweep's evaluation could detect between two trained points. From the observed
    paired error of its comparisons (ΔLong, best mix − best single: their median) when it has
    any, else the unpaired bound at the observed accuracy. None: no finished point."""
    if not points:
        return None
    sized = next((p.scores[0] for p in points if p.scores), None)
    n_eff = effective_problems(list(sized.sizes().values())) if sized else None
    n_problems = sum(sized.sizes().values()) if sized else 0
    accuracy = statistics.fmean(p.accuracy for p in points)
    seeds = max(p.n for p in points)
    errors = [c.stderr for r in rows for c in (r.gap_test, r.mix_test)
              if c is not None and c.stderr > 0]  # 0: two identical sides, nothing to scale
    if n_eff is None:
        return None
    kw = {"alpha": cfg.alpha, "power": cfg.power}
    if errors:
        se = statistics.median(errors)
        return Power(n_problems, samples, seeds, accuracy,
                     detectable_difference(n_eff, accuracy, stderr=se, **kw), cfg.detect,
                     problems_needed(cfg.detect, accuracy, n_problems=n_eff, stderr=se, **kw),
                     f"the observed paired error of {len(errors)} comparison(s)")
    # Every answer alike (accuracy 0 or 1, random students) shows no variance at all: the bound
    # at 0 would claim any difference is detectable. The worst case, 0.5, claims nothing.
    p = accuracy if 0.0 < accuracy < 1.0 else 0.5
    return Power(n_problems, samples, seeds, accuracy, detectable_difference(n_eff, p, **kw),
                 cfg.detect, problems_needed(cfg.detect, p, **kw),
                 f"the unpaired bound at accuracy {p:.2f}"
                 + ("" if p == accuracy else f" (observed {accuracy:.2f}: no variance to go by)"))


def power_line(pw: Power | None, cfg: AnalysisConfig = DEFAULTS) -> str:
    """The power statement, in one sentence."""
    if pw is None:
        return "power: no finished trial with per-problem scores; nothing to say"
    return (f"power: with {pw.n_problems} held-out problems x {pw.samples} sample(s) x "
            f"{pw.seeds} seed(s), differences below {pw.detectable:.3f} in accuracy could not "
            f"be told apart reliably ({cfg.power:.0%} power, {cfg.alpha:g} level; from "
            f"{pw.basis}); detecting {pw.detect:g} would take about {pw.needed} problems")


@dataclass(frozen=True)
class Findings:
    """Everything the summary and the report say about one invocation's results."""

    points: list[Point]
    gaps: list[GapRow]
    gains: list[Gain]
    power: Power | None


def analyse(trials: Iterable[Trial], baselines: dict[str, Baseline], samples: int,
            metric: str = "eval_accuracy", mode: Mode = "max",
            cfg: AnalysisConfig = DEFAULTS) -> Findings:
    """The curves, gaps, gains over the base models and power of a set of trials."""
    points = curve_points(trials, metric)
    rows = gap_rows(points, mode, cfg)
    return Findings(points, rows, gains(points, baselines, cfg), power(points, rows, samples, cfg))


def record_findings(rec: SweepRecord) -> Findings:
    """`analyse` on a sweep read back from MLflow, judged as the sweep was."""
    return analyse(rec.trials, rec.baselines, rec.samples, rec.metric, rec.mode, rec.analysis)
