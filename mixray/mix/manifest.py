"""Pools + MixSpec -> the ordered, hashed training manifest and its data card.

The manifest is the list of rows training reads, in order (the loop takes global batch k as rows
[k*G, (k+1)*G), cycling): pool, row id in the pool, problem_id, prompt, completion, n_tokens and
the schedule phase. It is a pure function of the pools' content and the spec (seed included), so
a run resumed at step k rebuilds it and reads on from row k*G exactly as it would have
(`Manifest.rows_from`). The content hash keys it by all of that.

A pool that runs dry — used up before it has supplied its share of the budget so far, the others
taking its place — is named in the card (`ran_dry`) and logged, or is a ValueError with
`mix.on_pool_exhausted: error`. A pool used up on schedule (the scarcest one at the end of budget
"all") is not running dry. `resolve_budget` refuses budgets beyond a pool's rows, so today this
is a guard: a shortfall means a budget slipped past that check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mixray.mix.card import data_card
from mixray.mix.config import LengthOrderSchedule, MixSpec
from mixray.mix.sampler import (
    Pick,
    PoolStreams,
    ProblemStream,
    Shortfall,
    Source,
    interleave,
    rng_for,
)
from mixray.mix.schedule import Segment, demand, segments

log = logging.getLogger(__name__)
COLUMNS = ("problem_id", "prompt", "completion", "n_tokens")
POOL_SCHEMA = pa.schema([("problem_id", pa.string()), ("prompt", pa.string()),
                         ("completion", pa.string()), ("n_tokens", pa.int64())])


@dataclass(frozen=True)
class Manifest:
    table: pa.Table  # pool, row, problem_id, prompt, completion, n_tokens, phase — in train order
    card: dict

    @property
    def content_hash(self) -> str:
        return self.card["content_hash"]

    def rows_from(self, step: int, global_batch: int, stop: int | None = None) -> pa.Table:
        """The rows training reads at steps [step, stop), as the loop's cycled windows of
        `global_batch` rows; `stop` defaults to the end of the first pass over the manifest."""
        n = self.table.num_rows
        stop = math.ceil(n / global_batch) if stop is None else stop
        idx = [(s * global_batch + i) % n for s in range(step, stop) for i in range(global_batch)]
        return self.table.take(pa.array(idx, pa.int64()))


def build_manifest(pools: dict[str, pa.Table], spec: MixSpec) -> Manifest:
    """Mix `pools` (teacher label -> curated table) as `spec` says; ValueError on user mistakes."""
    tables = _named_pools(pools, spec)
    segs = segments(spec)
    source, problems = _source(tables, spec)
    budget = resolve_budget(spec, tables, segs, problems)
    picks, shortfalls = interleave(segs, source, budget, whole=spec.unit == "samples",
                                   drain=spec.per_problem and spec.budget == "all")
    if not picks:
        sizes = {p: t.num_rows for p, t in tables.items()}
        raise ValueError(f"the mix is empty: mix.pools {spec.pools} over pools of {sizes} rows "
                         f"give no rows (budget {spec.budget!r})")
    dry = ran_dry(shortfalls, tables, spec, budget)
    table = _assemble(tables, picks)
    if isinstance(spec.schedule, LengthOrderSchedule):
        table = _length_order(table, spec)
    card = data_card(table, spec, segs, budget, tables, dry)
    card["content_hash"] = content_hash(spec, tables, table)
    return Manifest(table, card)


def ran_dry(shortfalls: list[Shortfall], tables: dict[str, pa.Table], spec: MixSpec,
            budget: float) -> list[Shortfall]:
    """The pools really short of their share of the budget (beyond float error, which the
    budget checks allow too); ValueError on them when mix.on_pool_exhausted is "error", else a
    warning."""
    dry = [s for s in shortfalls if s.short_by > 1e-6 * max(1.0, budget)]
    for s in dry:
        what = (f"pool {s.pool!r} ran dry in phase {s.phase}: {s.short_by:.6g} {spec.unit} "
                f"short of its share of the budget so far ({tables[s.pool].num_rows} rows, "
                f"mix.max_repeats={spec.max_repeats}); the other pools took its place")
        if spec.on_pool_exhausted == "error":
            raise ValueError(f"{what}. Lower mix.budget, allow repetition (mix.max_repeats), or "
                             "set mix.on_pool_exhausted: fill to accept it")
        log.warning("mix: %s (mix.on_pool_exhausted: fill)", what)
    return dry


def _named_pools(pools: dict[str, pa.Table], spec: MixSpec) -> dict[str, pa.Table]:
    """The spec's pools in its order, checked and cast to one schema (so they concatenate)."""
    missing = [p for p in spec.pools if p not in pools]
    if missing:
        raise ValueError(f"mix.pools names {missing}, but the pools given are {sorted(pools)}")
    out = {}
    for name in spec.pools:
        lacking = [c for c in COLUMNS if c not in pools[name].column_names]
        if lacking:
            raise ValueError(f"pool {name!r} lacks columns {lacking}")
        table = pools[name].select(list(COLUMNS)).cast(POOL_SCHEMA)
        if table.num_rows and (table["n_tokens"].null_count or min(_tokens(table)) < 0):
            raise ValueError(f"pool {name!r} has missing or negative n_tokens")
        out[name] = table
    return out


def _tokens(table: pa.Table) -> np.ndarray:
    return table["n_tokens"].to_numpy(zero_copy_only=False).astype(np.int64)


def _costs(table: pa.Table, spec: MixSpec) -> np.ndarray:
    """What each row adds to the mix in spec.unit."""
    return _tokens(table) if spec.unit == "tokens" else np.ones(table.num_rows, np.int64)


def _source(tables: dict[str, pa.Table], spec: MixSpec) -> tuple[Source, dict[str, np.ndarray]]:
    """The row source, and for per_problem the row each pool gives each shared problem."""
    costs = {p: _costs(t, spec) for p, t in tables.items()}
    if not spec.per_problem:
        return PoolStreams(costs, spec.max_repeats, spec.seed), {}
    rows = shared_problems(tables, spec.seed)
    return ProblemStream(rows, costs), rows


def shared_problems(tables: dict[str, pa.Table], seed: int) -> dict[str, np.ndarray]:
    """Pool -> its row for each problem present in every pool, problems in seeded random order.
    A pool with several responses to a problem offers one of them, chosen by the seed."""
    first: dict[str, dict[str, int]] = {}
    for name, table in tables.items():
        ids = table["problem_id"].to_pylist()
        chosen: dict[str, int] = {}
        for row in rng_for(seed, "response", name).permutation(len(ids)):
            chosen.setdefault(ids[row], int(row))
        first[name] = chosen
    common = sorted(set.intersection(*(set(c) for c in first.values())))
    order = [common[i] for i in rng_for(seed, "problems").permutation(len(common))]
    return {name: np.array([c[pid] for pid in order], np.int64) for name, c in first.items()}


def resolve_budget(spec: MixSpec, tables: dict[str, pa.Table], segs: list[Segment],
                   problems: dict[str, np.ndarray]) -> float:
    """The mixture's size in spec.unit; ValueError when an explicit budget exceeds the pools."""
    want = demand(segs)
    if spec.per_problem:
        return _problem_budget(spec, tables, want, problems)
    supply = {p: spec.max_repeats * float(_costs(t, spec).sum()) for p, t in tables.items()}
    if spec.budget == "all":
        most = min(supply[p] / w for p, w in want.items() if w > 0)
        return math.floor(most + 1e-9) if spec.unit == "samples" else most
    for pool, w in want.items():
        if spec.budget * w > supply[pool] * (1 + 1e-9):
            raise ValueError(
                f"mix.budget asks for {spec.budget} {spec.unit}, {spec.budget * w:.6g} of them "
                f"from pool {pool!r} (share {w:.3g}), but {pool!r} holds {supply[pool]:.6g} "
                f"{spec.unit} with mix.max_repeats={spec.max_repeats}; lower the budget or allow "
                "repetition")
    return float(spec.budget)


def _problem_budget(spec: MixSpec, tables: dict[str, pa.Table], want: dict[str, float],
                    problems: dict[str, np.ndarray]) -> float:
    """per_problem: each shared problem once, so the supply is the problems (their expected
    tokens at these weights, in the tokens unit)."""
    n = len(next(iter(problems.values())))
    if spec.unit == "samples":
        supply = float(n)
    else:
        supply = sum(w * float(_tokens(tables[p])[problems[p]].sum()) for p, w in want.items())
    if spec.budget == "all":
        return supply
    if spec.budget > supply * (1 + 1e-9):
        raise ValueError(f"mix.budget asks for {spec.budget} {spec.unit}, but with "
                         f"mix.per_problem the {n} problems shared by every pool give about "
                         f"{supply:.6g}; lower the budget or turn per_problem off")
    return float(spec.budget)


def _assemble(tables: dict[str, pa.Table], picks: list[Pick]) -> pa.Table:
    pool = np.array([p.pool for p in picks], dtype=object)
    row = np.array([p.row for p in picks], np.int64)
    parts, positions = [], []
    for name, table in tables.items():
        at = np.flatnonzero(pool == name)
        if len(at):
            parts.append(table.take(pa.array(row[at])))
            positions.append(at)
    # the parts hold the rows pool by pool; argsort of their positions puts them in pick order
    body = pa.concat_tables(parts).take(pa.array(np.argsort(np.concatenate(positions))))
    columns = {"pool": pa.array(pool.tolist(), pa.string()), "row": pa.array(row)}
    columns |= {c: body[c] for c in COLUMNS}
    columns["phase"] = pa.array([p.phase for p in picks], pa.int32())
    return pa.table(columns)


def _length_order(table: pa.Table, spec: MixSpec) -> pa.Table:
    """Short to long by n_tokens (ties in seeded random order), phases = equal slices."""
    tokens = _tokens(table)
    ties = rng_for(spec.seed, "length_order").permutation(len(tokens))
    table = table.take(pa.array(np.lexsort((ties, tokens))))
    k = spec.schedule.segments
    costs = _costs(table, spec).astype(np.float64)
    before = np.cumsum(costs) - costs
    phase = np.minimum(k - 1, np.floor(k * before / max(costs.sum(), 1.0))).astype(np.int32)
    return table.set_column(table.schema.get_field_index("phase"), "phase", pa.array(phase))


def _column_digest(table: pa.Table) -> str:
    h = hashlib.sha256()
    for name in table.column_names:
        h.update(json.dumps([name, table[name].to_pylist()]).encode())
    return h.hexdigest()


def content_hash(spec: MixSpec, tables: dict[str, pa.Table], table: pa.Table) -> str:
    """A key of everything the manifest is a function of (spec, pools' content) and of the
    manifest itself, so a change of any input gives another hash."""
    # on_pool_exhausted never changes the manifest (it either stands or is an error): not a key
    fields = spec.model_dump(mode="json", exclude={"on_pool_exhausted"})
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for name, pool in tables.items():
        h.update(json.dumps([name, _column_digest(pool)]).encode())
    h.update(_column_digest(table.select(["pool", "row", "phase"])).encode())
    return h.hexdigest()[:16]
