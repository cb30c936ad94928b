"""The deterministic sampler: which pool supplies each next row, and which row it supplies.

Rows come from a `Source`: `PoolStreams` reads every pool in its own seeded random order (several
passes when repetition is allowed), `ProblemStream` walks the problems shared by every pool and lets
the chosen pool answer the current one (the paper's pairing). `interleave` fills each schedule
segment greedily: the next row comes from the pool that lags its target most, measured at the
middle of that row, so every prefix of the manifest (hence every stretch of training, not just the
whole run) holds the requested mix to within about one row per pool. Everything is a function of
(pools, spec, seed): no global random state, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mixray.mix.schedule import Segment


def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """An independent generator per purpose, so one draw never shifts another (adding a pool
    leaves the other pools' row orders alone)."""
    digest = hashlib.sha256(repr((seed, *labels)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


class Source(Protocol):
    def cost(self, pool: str) -> float | None:
        """What the pool's next row would add in the mix's unit; None when it has no next row."""

    def take(self, pool: str) -> int:
        """The pool's next row id; advances the source."""


class PoolStreams:
    """Each pool in seeded random passes, at most `repeats` of them: every row once before any
    twice. Passes are drawn only when reached, so a generous repetition cap costs nothing."""

    def __init__(self, costs: dict[str, np.ndarray], repeats: int, seed: int) -> None:
        self.costs, self.repeats = costs, repeats
        self.rng = {p: rng_for(seed, "rows", p) for p in costs}
        self.order: dict[str, list[int]] = {p: [] for p in costs}
        self.pos = dict.fromkeys(costs, 0)

    def _next(self, pool: str) -> int | None:
        i, order, n = self.pos[pool], self.order[pool], len(self.costs[pool])
        if i == len(order) and n and len(order) < self.repeats * n:
            order += self.rng[pool].permutation(n).tolist()
        return order[i] if i < len(order) else None

    def cost(self, pool: str) -> float | None:
        row = self._next(pool)
        return None if row is None else float(self.costs[pool][row])

    def take(self, pool: str) -> int:
        row = self._next(pool)
        assert row is not None, "take() only after cost() said there is a row"
        self.pos[pool] += 1
        return row


class ProblemStream:
    """One cursor over shared problems; `rows[pool][i]` is the pool's response to problem i."""

    def __init__(self, rows: dict[str, np.ndarray], costs: dict[str, np.ndarray]) -> None:
        lengths = {len(r) for r in rows.values()}
        assert len(lengths) == 1, "every pool answers every shared problem"
        self.rows, self.costs, self.n, self.i = rows, costs, lengths.pop(), 0

    def cost(self, pool: str) -> float | None:
        return float(self.costs[pool][self.rows[pool][self.i]]) if self.i < self.n else None

    def take(self, pool: str) -> int:
        row = int(self.rows[pool][self.i])
        self.i += 1
        return row


@dataclass(frozen=True)
class Pick:
    pool: str
    row: int
    phase: int
    cost: float


def interleave(segs: list[Segment], source: Source, budget: float, whole: bool,
               drain: bool = False) -> list[Pick]:
    """Fill the segments in order up to `budget` (in the unit of the source's costs).

    Segment ends are absolute (`budget * seg.end`), so a row that overshoots one segment is taken
    off the next and errors never add up. `whole`: the unit is samples and ends are rounded.
    `drain`: the last segment goes on until the source is used up (when the budget is only an
    estimate of "all", as for per-problem mixes counted in tokens).
    """
    picks: list[Pick] = []
    spent = 0.0
    for seg in segs:
        end = round(budget * seg.end) if whole else budget * seg.end
        new = _fill(seg, source, end - spent, drain and seg is segs[-1])
        spent += sum(p.cost for p in new)
        picks += new
    return picks


def _fill(seg: Segment, source: Source, size: float, drain: bool) -> list[Pick]:
    used = dict.fromkeys(seg.w0, 0.0)
    spent, picks = 0.0, []
    while spent < size or drain:
        pool = _most_behind(seg, source, used, spent, size)
        if pool is None:  # every pool of this segment is used up: only at the end of "all"
            break
        cost = source.cost(pool)
        picks.append(Pick(pool, source.take(pool), seg.phase, cost))
        used[pool] += cost
        spent += cost
    return picks


def _most_behind(seg: Segment, source: Source, used: dict[str, float], spent: float,
                 size: float) -> str | None:
    """The active pool furthest below its target at the middle of its next row; ties go to the
    larger weight, then to the pool listed first."""
    best, best_key = None, None
    for rank, pool in enumerate(used):
        cost = source.cost(pool)
        if cost is None or not seg.active(pool):
            continue
        mid = min(1.0, (spent + cost / 2) / size) if size > 0 else 1.0
        lag = size * seg.cumulative_share(pool, mid) - (used[pool] + cost / 2)
        key = (lag, seg.w0[pool] + (seg.w1[pool] - seg.w0[pool]) * mid, -rank)
        if best_key is None or key > best_key:
            best, best_key = pool, key
    return best
