"""The deterministic sampler: which pool supplies each next row, and which row it supplies.

Rows come from a `Source`: `PoolStreams` reads every pool in its own seeded random order (several
passes when repetition is allowed), `ProblemStream` walks the problems shared by every pool and lets
the chosen pool answer the current one (the paper's pairing). `interleave` fills each schedule
segment greedily: the next row comes from the pool that lags its target most, measured at the
middle of that row, so every prefix of the manifest (hence every stretch of training, not just the
whole run) holds the requested mix to within about one row per pool. Everything is a function of
(pools, spec, seed): no global random state, no clock.

A pool used up while its segment still draws rows is replaced by the others there; `interleave`
reports each such case as a `Shortfall` (how far the pool fell behind its share of the budget so
far), and the manifest builder decides what a shortfall means (manifest.py).
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


@dataclass(frozen=True)
class Shortfall:
    """A pool that was used up in segment `phase` while the segment took other pools' rows in
    its place. `short_by`: its share of the budget up to the segment's end, as the schedule
    requests it, less what it supplied, in the mix's unit (<= 0 when it had supplied its share,
    as the scarcest pool has when it is used up at the end of budget "all")."""

    pool: str
    phase: int
    short_by: float


def interleave(segs: list[Segment], source: Source, budget: float, whole: bool,
               drain: bool = False) -> tuple[list[Pick], list[Shortfall]]:
    """Fill the segments in order up to `budget` (in the unit of the source's costs).

    Segment ends are absolute (`budget * seg.end`), so a row that overshoots one segment is taken
    off the next and errors never add up. `whole`: the unit is samples and ends are rounded.
    `drain`: the last segment goes on until the source is used up (when the budget is only an
    estimate of "all", as for per-problem mixes counted in tokens).
    """
    picks: list[Pick] = []
    shortfalls: list[Shortfall] = []
    spent = 0.0
    # Requested (of the budget, not of what was mixed: rows overshooting a segment's end must
    # not put a pool behind) and supplied amounts so far. A pool that supplied more than its share
    # in earlier segments is not behind when it runs out in a later one.
    wanted = dict.fromkeys(segs[0].w0, 0.0)
    supplied = dict.fromkeys(segs[0].w0, 0.0)
    for seg in segs:
        end = round(budget * seg.end) if whole else budget * seg.end
        new, dry = _fill(seg, source, end - spent, drain and seg is segs[-1])
        spent += sum(p.cost for p in new)
        picks += new
        for pool in wanted:
            wanted[pool] += budget * seg.fraction * seg.mean_weight(pool)
        for p in new:
            supplied[p.pool] += p.cost
        shortfalls += [Shortfall(pool, seg.phase, wanted[pool] - supplied[pool])
                       for pool in wanted if pool in dry]
    return picks, shortfalls


def _fill(seg: Segment, source: Source, size: float, drain: bool) -> tuple[list[Pick], set[str]]:
    """The segment's picks, and the active pools that were used up while it still took rows."""
    used = dict.fromkeys(seg.w0, 0.0)
    spent, picks, dry = 0.0, [], set()
    while spent < size or drain:
        pool = _most_behind(seg, source, used, spent, size)
        if pool is None:  # every pool of this segment is used up
            break
        dry |= {p for p in used if seg.active(p) and source.cost(p) is None}
        cost = source.cost(pool)
        picks.append(Pick(pool, source.take(pool), seg.phase, cost))
        used[pool] += cost
        spent += cost
    return picks, dry


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
