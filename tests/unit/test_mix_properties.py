"""Properties of the mix over random pools and specs (hypothesis).

Stated tolerances: a pool's realised amount differs from its requested share of what was realised
by at most one row — 1 sample in the samples unit, the longest row's tokens in the tokens unit —
over the whole mixture and within every phase of a schedule.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mixray.mix.config import MixSpec
from mixray.mix.manifest import build_manifest

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ("a", "b", "c")


def table(name: str, tokens: list[int], chunks: int = 1) -> pa.Table:
    ids = [f"p{i}" for i in range(len(tokens))]
    t = pa.table({"problem_id": ids, "prompt": [f"q{i}" for i in ids],
                  "completion": [f"{name}:{i}" for i in ids], "n_tokens": tokens})
    # the same content in other chunks, as a pool read back from Parquet might be
    step = max(1, math.ceil(len(tokens) / chunks))
    return pa.concat_tables([t.slice(i, step) for i in range(0, len(tokens), step)] or [t])


weight = st.one_of(st.integers(0, 5).map(float), st.floats(0.0, 1.0, allow_subnormal=False))


@st.composite
def pool_tokens(draw) -> dict[str, list[int]]:
    k = draw(st.integers(2, 3))
    return {n: draw(st.lists(st.integers(1, 400), min_size=1, max_size=40)) for n in NAMES[:k]}


@st.composite
def weights(draw, names) -> dict[str, float]:
    w = {n: draw(weight) for n in names}
    assume(sum(w.values()) > 1e-3)
    return w


@st.composite
def schedule(draw, names, kinds) -> dict:
    kind = draw(st.sampled_from(kinds))
    if kind == "phases":
        parts = draw(st.lists(st.integers(1, 10), min_size=1, max_size=3))
        return {"kind": kind, "phases": [
            {"fraction": p / sum(parts), "weights": draw(weights(names))} for p in parts]}
    if kind == "ramp":
        return {"kind": kind, "start": draw(weights(names)), "end": draw(weights(names)),
                "segments": draw(st.integers(1, 4))}
    if kind == "length_order":
        return {"kind": kind, "segments": draw(st.integers(1, 4))}
    return {"kind": kind}


@st.composite
def cases(draw, kinds=("constant",)) -> tuple[dict[str, pa.Table], MixSpec]:
    toks = draw(pool_tokens())
    names = list(toks)
    fields = {"pools": draw(weights(names)), "unit": draw(st.sampled_from(["samples", "tokens"])),
              "seed": draw(st.integers(0, 2**40)), "long_pool": names[0], "short_pool": names[1]}
    fields["schedule"] = draw(schedule(names, kinds))
    fields["per_problem"] = draw(st.booleans())  # pools share problems p0, p1, ...
    if fields["schedule"]["kind"] != "constant" and not fields["per_problem"]:
        # explicit budget with ample repetition: no pool runs dry before the last phase
        fields |= {"max_repeats": 2000,
                   "budget": draw(st.integers(1, 200 if fields["unit"] == "samples" else 2000))}
    return {n: table(n, t) for n, t in toks.items()}, MixSpec.model_validate(fields)


def within_one_row(rows: pa.Table, requested: dict[str, float], unit: str, longest: int) -> None:
    pool = np.array(rows["pool"].to_pylist(), dtype=object)
    cost = rows["n_tokens"].to_numpy() if unit == "tokens" else np.ones(len(pool))
    tolerance = longest if unit == "tokens" else 1
    for name, share in requested.items():
        got = cost[pool == name].sum()
        assert abs(got - share * cost.sum()) <= tolerance + 1e-6, (name, got, share, cost.sum())


@SETTINGS
@given(cases())
def test_realised_shares_match_the_request_constant(case) -> None:
    pools, spec = case
    m = build_manifest(pools, spec)
    total = sum(spec.pools.values())
    longest = max(max(t["n_tokens"].to_pylist()) for t in pools.values())
    within_one_row(m.table, {p: w / total for p, w in spec.pools.items()}, spec.unit, longest)
    if spec.per_problem:  # budget "all": every shared problem once
        shared = min(t.num_rows for t in pools.values())
        ids = m.table["problem_id"].to_pylist()
        assert len(ids) == len(set(ids)) == shared
    elif spec.unit == "samples":  # budget "all" without repetition uses up the scarcest pool
        assert any(m.card["pools"][p]["samples"] >= t.num_rows - 1
                   for p, t in pools.items() if spec.pools[p] > 0)


@SETTINGS
@given(cases(kinds=("phases", "ramp")))
def test_realised_shares_match_the_request_in_every_phase(case) -> None:
    pools, spec = case
    m = build_manifest(pools, spec)
    longest = max(max(t["n_tokens"].to_pylist()) for t in pools.values())
    phases = m.table["phase"].to_numpy()
    assert (np.diff(phases) >= 0).all()  # phases run in training order
    for card in m.card["phases"]:
        requested = {p: c["requested_share"] for p, c in card["pools"].items()}
        within_one_row(m.table.filter(pa.array(phases == card["phase"])), requested, spec.unit,
                       longest)


def mutations(spec: MixSpec, pools: dict[str, pa.Table]) -> list[tuple[dict, dict]]:
    """(pools, spec fields) differing from the case in one input each."""
    first = next(iter(pools))
    edited = pools[first].set_column(2, "completion", pa.array(
        ["changed"] + pools[first]["completion"].to_pylist()[1:]))
    base = spec.model_dump()
    flip = {"samples": "tokens", "tokens": "samples"}
    variants = [{"seed": spec.seed + 1}, {"unit": flip[spec.unit]},
                {"max_repeats": spec.max_repeats + 1},
                {"budget": spec.budget + 1 if spec.budget != "all" else 3},
                {"pools": spec.pools | {first: spec.pools[first] + 1.0}},
                {"per_problem": not spec.per_problem, "max_repeats": 1},
                {"schedule": {"kind": "length_order"} if spec.schedule.kind != "length_order"
                 else {"kind": "constant"}}]
    return [(pools, base | v) for v in variants] + [(pools | {first: edited}, base)]


@SETTINGS
@given(cases(kinds=("constant", "phases", "ramp", "length_order")))
def test_same_inputs_same_hash_any_change_another(case) -> None:
    pools, spec = case
    a = build_manifest(pools, spec)
    rechunked = {n: table(n, t["n_tokens"].to_pylist(), chunks=3) for n, t in pools.items()}
    b = build_manifest(rechunked, MixSpec.model_validate(spec.model_dump()))
    assert a.table.equals(b.table) and a.content_hash == b.content_hash
    for other_pools, fields in mutations(spec, pools):
        try:
            other = build_manifest(other_pools, MixSpec.model_validate(fields))
        except ValueError:  # the change made the mix impossible (budget beyond the pools)
            continue
        assert other.content_hash != a.content_hash, fields


@SETTINGS
@given(cases(kinds=("constant", "phases", "ramp", "length_order")), st.integers(1, 8),
       st.integers(0, 60))
def test_resuming_at_step_k_reproduces_the_rest(case, global_batch: int, k: int) -> None:
    pools, spec = case
    before = build_manifest(pools, spec)
    # a resumed run rebuilds the manifest from the same inputs, then reads on from step k
    after = build_manifest({n: table(n, t["n_tokens"].to_pylist(), chunks=2)
                            for n, t in pools.items()}, spec)
    stop = k + 5
    uninterrupted = before.rows_from(0, global_batch, stop).slice(k * global_batch)
    assert after.rows_from(k, global_batch, stop).equals(uninterrupted)
