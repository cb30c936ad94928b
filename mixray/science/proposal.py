"""Propose the next mix: where a sweep's finished trials put the best long share, and the search
of a sweep that looks there next (`python -m mixray.propose` prints and writes it; the report's
section (h) shows it).

- `fit_share_curve`: weighted least squares of value = a + b*s + c*s^2 (weights 1/se^2), its
  best share on [0, 1], and a parametric-bootstrap interval of that share (each point redrawn
  from N(value, se^2), refitted); with fewer than 3 distinct shares, the best observed point;
- `propose`: that fit per (student, pools, schedule) over `mixray.science.analysis.Point` records;
- `next_space`: the grid of the next sweep; `next_sweep`: the parent's config searching it. Pure.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from mixray.science.analysis import Point
from mixray.search import LONG_SHARE

log = logging.getLogger(__name__)
QUADRATIC, OBSERVED = "weighted quadratic", "best observed"
# A point whose se is unknown (or 0, which would weigh infinitely) counts as typically precise:
# the median of the others' se; with none known, 0.05, the se of an accuracy near 0.5 over about
# 100 eval problems (mixray's sweeps evaluate tens to hundreds).
DEFAULT_SE = 0.05
MIN_WIDTH = 0.2  # next_space looks at least this wide around each best share


class ShareFit(NamedTuple):
    best_share: float
    low: float | None
    high: float | None
    predicted: float | None
    method: str


@dataclass(frozen=True)
class Proposal:
    student: str
    pools: tuple[str, str]
    schedule: str | None
    best_share: float  # predicted best share in [0, 1]
    low: float | None  # its interval (level, 95%); None when it cannot be given
    high: float | None
    predicted: float | None  # predicted metric at best_share (best observed: the observed one)
    method: str  # "weighted quadratic" | "best observed" (fewer than 3 distinct shares)
    n_points: int
    point: str = ""  # the other search values the curve holds fixed (analysis.Point.point)


def _filled_se(stderrs: np.ndarray) -> np.ndarray:
    known = np.isfinite(stderrs) & (stderrs > 0)
    fill = float(np.median(stderrs[known])) if known.any() else DEFAULT_SE
    return np.where(known, stderrs, fill)


def _best_of_quadratics(coef: np.ndarray) -> np.ndarray:
    """Argmax over [0, 1] of a + b*s + c*s^2 for each row (a, b, c): the vertex, clipped to
    [0, 1], when the curve is concave; else the better end."""
    b, c = coef[..., 1], coef[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.clip(-b / (2 * c), 0.0, 1.0)
    end = np.where(b + c > 0, 1.0, 0.0)  # f(1) - f(0) = b + c
    return np.where(c < 0, vertex, end)


def fit_share_curve(shares: Sequence[float], values: Sequence[float],
                    stderrs: Sequence[float | None], *, mode: Literal["max", "min"] = "max",
                    draws: int = 2000, seed: int = 0, level: float = 0.95) -> ShareFit:
    """The best share on [0, 1] of a weighted quadratic through (share, value +- se), with a
    parametric-bootstrap interval; fewer than 3 distinct shares: the best observed point."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    s, y = np.asarray(shares, dtype=float), np.asarray(values, dtype=float)
    se = np.asarray([math.nan if e is None else e for e in stderrs], dtype=float)
    if not len(s) == len(y) == len(se) > 0 or not np.isfinite([*s, *y]).all():
        raise ValueError(f"need as many finite shares and values as stderrs, at least one; got "
                         f"shares {list(s)}, values {list(y)}, stderrs {list(se)}")
    sign = 1.0 if mode == "max" else -1.0  # fit sign * value, always maximise
    if len(np.unique(s)) < 3:
        i = int(np.argmax(sign * y))  # no curve: the best point, no interval
        return ShareFit(float(s[i]), None, None, float(y[i]), OBSERVED)
    se = _filled_se(se)
    design = np.stack([np.ones_like(s), s, s * s], axis=1) / se[:, None]
    coef = np.linalg.lstsq(design, sign * y / se, rcond=None)[0]
    best = float(_best_of_quadratics(coef))
    predicted = float(coef @ [1.0, best, best * best]) * sign
    rng = np.random.default_rng(seed)
    redrawn = sign * (y + se * rng.standard_normal((draws, len(y))))
    boot = np.linalg.lstsq(design, (redrawn / se).T, rcond=None)[0].T
    low, high = np.quantile(_best_of_quadratics(boot), [(1 - level) / 2, (1 + level) / 2])
    return ShareFit(best, float(low), float(high), predicted, QUADRATIC)


def propose(points: Sequence[Point], mode: Literal["max", "min"] = "max", seed: int = 0,
            draws: int = 2000, level: float = 0.95) -> list[Proposal]:
    """One proposal per (student, pools, schedule, other search values), fitted on each point's
    accuracy and stderr (a point's seeds are already averaged, their spread in its stderr)."""
    groups: dict[tuple[str, tuple[str, str], str | None, str], list[Point]] = defaultdict(list)
    for p in points:
        groups[(p.student, p.pools, p.schedule, p.point)].append(p)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2] or "", k[3])):
        (student, pools, schedule, other), pts = key, groups[key]
        fit = fit_share_curve([p.share for p in pts], [p.accuracy for p in pts],
                              [p.stderr for p in pts], mode=mode, draws=draws, seed=seed,
                              level=level)
        log.info("propose: %s %s %s %s: %s", student, pools, schedule, other, fit)
        out.append(Proposal(student, pools, schedule, *fit, len(pts), other))
    return out


def next_space(proposals: Sequence[Proposal], points: int = 5) -> list[float]:
    """Shares for the next sweep: per proposal, `points` evenly spaced over its interval, widened
    to at least MIN_WIDTH around the best share (slid back inside [0, 1] at an end), plus the best
    share itself; rounded to 2 decimals, the union sorted."""
    if not proposals or points < 2:
        raise ValueError(f"need a proposal and points >= 2, got {len(proposals)} and {points}")
    grid: set[float] = set()
    for p in proposals:
        lo = min(p.best_share - MIN_WIDTH / 2, p.best_share if p.low is None else p.low)
        hi = max(p.best_share + MIN_WIDTH / 2, p.best_share if p.high is None else p.high)
        lo, hi = max(0.0, lo - max(0.0, hi - 1.0)), min(1.0, hi + max(0.0, -lo))
        grid.update(round(float(v), 2) for v in np.linspace(lo, hi, points))
        grid.add(round(p.best_share, 2))
    return sorted(grid)


def next_sweep(config: dict[str, Any], grid: Sequence[float]) -> dict[str, Any]:
    """The parent's sweep config (``SweepConfig.model_dump()``) with a long_share grid search:
    its other grid axes kept, drawn axes dropped (a grid sweep cannot draw), settings kept."""
    search = dict(config.get("search") or {})
    space = search.get("space") or {}
    kept = {k: {"grid": d["grid"]} for k, d in space.items()
            if k != LONG_SHARE and d.get("grid") is not None}
    if dropped := sorted(set(space) - set(kept) - {LONG_SHARE}):
        log.warning("propose: the next sweep drops the drawn search axes %s", dropped)
    search.update(algorithm="grid", long_share=list(grid), space=kept, num_samples=1)
    return config | {"name": f"{config['name']}-next", "search": search}


def describe(p: Proposal) -> str:
    """One proposal as a line (what is fitted is the eval accuracy)."""
    where = f"{p.pools[0]} vs {p.pools[1]}" + (f", schedule {p.schedule}" if p.schedule else "") \
        + (f", {p.point}" if p.point else "")
    interval = f" [{p.low:.2f}, {p.high:.2f}]" if p.low is not None and p.high is not None else ""
    how = "predicted" if p.method == QUADRATIC else "observed"
    value = ("" if p.predicted is None else
             f", {how} accuracy {p.predicted:.3f}")
    return (f"student {p.student} ({where}): best {p.pools[0]} share {p.best_share:.2f}{interval}"
            f" ({p.method} over {p.n_points} shares){value}")
