"""The mix by example: the sweep's long_share grid, budgets and repetition, schedules, the paper's
Mix-Long with its data card, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from mixray.mix.config import MixSpec
from mixray.mix.manifest import build_manifest


def pool(name: str, n: int, tokens: int | list[int], ids: list[str] | None = None) -> pa.Table:
    ids = ids if ids is not None else [f"p{i}" for i in range(n)]
    return pa.table({
        "problem_id": ids,
        "prompt": [f"q {pid}" for pid in ids],
        "completion": [f"{name} answer {pid}" for pid in ids],
        "n_tokens": tokens if isinstance(tokens, list) else [tokens] * n,
        "teacher": [name] * n,  # pools carry more columns than the mix reads
    })


def spec(**fields) -> MixSpec:
    return MixSpec.model_validate(fields)


POOLS = {"long": pool("long", 50, 300), "short": pool("short", 100, 100)}


def counts(m, column: str = "pool") -> dict:
    values, n = np.unique(m.table[column].to_numpy(zero_copy_only=False), return_counts=True)
    return dict(zip(values.tolist(), n.tolist(), strict=True))


def test_smoke_grid_share_zero_is_the_short_pool_and_half_uses_both() -> None:
    pools = {"long": pool("long", 24, 40), "short": pool("short", 24, 10)}
    base = spec(pools={"long": 0.5, "short": 0.5})
    assert build_manifest(pools, base.with_long_share(0.0)).card["rows"] == 24
    half = build_manifest(pools, base.with_long_share(0.5))
    assert counts(half) == {"long": 24, "short": 24}


@pytest.mark.parametrize(("share", "long", "short"), [
    (0.0, 0, 100), (1.0, 50, 0), (0.2, 25, 100), (0.5, 50, 50), (0.8, 50, 12)])
def test_budget_all_uses_up_the_scarcer_pool(share: float, long: int, short: int) -> None:
    m = build_manifest(POOLS, MixSpec().with_long_share(share))
    got = counts(m)
    assert abs(got.get("long", 0) - long) <= 1 and abs(got.get("short", 0) - short) <= 1
    keys = list(zip(m.table["pool"].to_pylist(), m.table["row"].to_pylist(), strict=True))
    assert len(set(keys)) == len(keys)  # without replacement


def test_every_window_of_training_holds_the_mix() -> None:
    m = build_manifest(POOLS, spec(pools={"long": 1, "short": 4}))  # 1:4 is 0.2:0.8
    is_long = np.array(m.table["pool"].to_pylist()) == "long"
    windows = is_long[: len(is_long) // 10 * 10].reshape(-1, 10).sum(axis=1)
    assert set(windows.tolist()) == {2}


def test_token_unit_matches_token_shares() -> None:
    m = build_manifest(POOLS, spec(unit="tokens", pools={"long": 0.5, "short": 0.5}))
    card = m.card
    assert card["pools"]["long"]["token_share"] == pytest.approx(0.5, abs=300 / card["tokens"])
    assert card["pools"]["long"]["sample_share"] < 0.4  # long rows are 3x the tokens


def test_upsampling_needs_and_respects_a_repetition_cap() -> None:
    ask = spec(pools={"long": 0.5, "short": 0.5}, budget=150)
    with pytest.raises(ValueError, match=r"mix\.budget.*'long'.*max_repeats=1"):
        build_manifest(POOLS, ask)
    m = build_manifest(POOLS, ask.model_copy(update={"max_repeats": 2}))
    long = m.card["pools"]["long"]
    assert long["samples"] == 75 and long["distinct_rows"] == 50 and long["max_uses"] == 2


def test_phases_give_each_stretch_its_own_mix() -> None:
    m = build_manifest(POOLS, spec(budget=100, schedule={"kind": "phases", "phases": [
        {"fraction": 0.4, "weights": {"short": 1}}, {"fraction": 0.6}]}))
    assert m.table["phase"].to_pylist() == [0] * 40 + [1] * 60
    first, second = m.card["phases"]
    assert first["pools"]["short"]["sample_share"] == 1.0
    assert second["pools"]["long"]["requested_share"] == pytest.approx(0.2)
    assert second["pools"]["long"]["samples"] == 12
    assert m.card["pools"]["long"]["requested_share"] == pytest.approx(0.6 * 0.2)


def test_ramp_moves_the_mix_and_length_order_sorts_it() -> None:
    ramp = build_manifest(POOLS, spec(budget=100, schedule={
        "kind": "ramp", "start": {"short": 1}, "end": {"long": 1, "short": 1}, "segments": 4}))
    long_by_phase = [p["pools"]["long"]["samples"] for p in ramp.card["phases"]]
    assert long_by_phase == sorted(long_by_phase) and long_by_phase[0] < long_by_phase[-1]
    assert sum(long_by_phase) == pytest.approx(25, abs=2)  # the mean weight of the ramp, 0.25

    mixed = {"long": pool("long", 50, list(range(100, 150))), "short": pool("short", 100, 10)}
    curriculum = build_manifest(mixed, spec(schedule={"kind": "length_order", "segments": 2}))
    tokens = curriculum.table["n_tokens"].to_pylist()
    assert tokens == sorted(tokens)
    assert curriculum.card["pools"]["long"]["sample_share"] == pytest.approx(0.2, abs=0.01)
    assert [p["pools"]["long"]["requested_share"] for p in curriculum.card["phases"]] == [None] * 2


def test_paper_mix_long_over_the_same_problems() -> None:
    """PAPER.md: 20% long / 80% short CoT of the same 5,383 problems; long rows ~3x the tokens."""
    rng = np.random.default_rng(0)
    solved_by_both = [f"math-{i}" for i in range(5383)]
    long_ids = solved_by_both + [f"only-long-{i}" for i in range(300)]
    short_ids = solved_by_both + [f"only-short-{i}" for i in range(500)]
    lengths = {"long": (600, 1200), "short": (200, 400)}  # long CoT ~3x the tokens
    pools = {name: pool(name, len(ids), rng.integers(*lengths[name], len(ids)).tolist(), ids)
             for name, ids in (("long", long_ids), ("short", short_ids))}
    m = build_manifest(pools, spec(pools={"long": 0.2, "short": 0.8}, per_problem=True, seed=42))
    card = m.card
    ids = m.table["problem_id"].to_pylist()
    assert len(ids) == len(set(ids)) == card["rows"] == card["problems"] == 5383
    assert set(ids) == set(solved_by_both)
    long, short = card["pools"]["long"], card["pools"]["short"]
    assert long["samples"] == round(0.2 * 5383) and long["requested_share"] == pytest.approx(0.2)
    assert long["sample_share"] == pytest.approx(0.2, abs=1 / 5383)
    # in tokens the 20% of long CoT is about 0.2*900 / (0.2*900 + 0.8*300) = 43% of the mixture
    assert long["token_share"] == pytest.approx(0.43, abs=0.02)
    assert long["token_share"] + short["token_share"] == pytest.approx(1.0)
    assert json.loads(json.dumps(card)) == card  # the caller writes it as JSON and logs it


def test_manifest_columns_and_card_keys() -> None:
    m = build_manifest(POOLS, MixSpec())
    assert m.table.column_names == ["pool", "row", "problem_id", "prompt", "completion",
                                    "n_tokens", "phase"]
    assert {"content_hash", "rows", "tokens", "pools", "phases", "budget"} <= set(m.card)
    assert m.content_hash == m.card["content_hash"]


def test_rows_from_is_the_training_loops_cycled_window() -> None:
    m = build_manifest({"long": pool("long", 3, 5), "short": pool("short", 4, 5)},
                       spec(pools={"long": 3, "short": 4}))
    assert m.table.num_rows == 7
    order = m.table["row"].to_pylist()
    rows = m.rows_from(2, global_batch=4, stop=4)["row"].to_pylist()
    assert rows == [order[i % 7] for i in range(8, 16)]
    assert m.rows_from(0, 4).num_rows == 8  # one pass, rounded up to whole steps


@pytest.mark.parametrize(("pools", "mix", "match"), [
    (POOLS, spec(pools={"long": 1, "large": 1}), r"mix\.pools names \['large'\]"),
    ({"long": pool("long", 0, 1), "short": pool("short", 0, 1)}, MixSpec(), "empty"),
    (POOLS, spec(budget=1000), r"mix\.budget"),
    (POOLS, spec(per_problem=True, budget=101), r"mix\.budget.*per_problem"),
    ({"long": POOLS["long"].drop_columns(["n_tokens"]), "short": POOLS["short"]}, MixSpec(),
     "lacks columns"),
])
def test_build_errors_name_the_field(pools, mix, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_manifest(pools, mix)


def test_validation_problems_are_held_out_of_every_mix_and_shared_by_all() -> None:
    from mixray.mix.validation import split_validation

    pools = {"long": pool("long", 30, 300), "short": pool("short", 40, 100)}  # p0..p29 shared
    train, val = split_validation(pools, 5, seed=3)
    held = set(val["problem_id"].to_pylist())
    assert len(held) == 5 and held <= {f"p{i}" for i in range(30)}
    assert sorted(val["pool"].to_pylist()) == ["long"] * 5 + ["short"] * 5  # every pool's response
    for name, table in train.items():
        assert not held & set(table["problem_id"].to_pylist())
        assert table.num_rows == pools[name].num_rows - 5
    # The weights and schedule play no part: every trial over these pools holds out the same.
    for share in (0.0, 0.5, 1.0):
        m = build_manifest(train, spec(pools={"long": share, "short": 1 - share}))
        assert not held & set(m.table["problem_id"].to_pylist())
    assert split_validation(pools, 5, seed=3)[1].equals(val)
    assert set(split_validation(pools, 5, seed=4)[1]["problem_id"].to_pylist()) != held
    with pytest.raises(ValueError, match="only 30 problems have a response in every pool"):
        split_validation(pools, 31, seed=3)


# --- pools that run dry ------------------------------------------------------------------------

def _ones(n: int) -> np.ndarray:
    return np.ones(n, np.int64)


def test_the_sampler_reports_a_pool_used_up_short_of_its_share_of_the_budget() -> None:
    from mixray.mix.sampler import PoolStreams, Shortfall, interleave
    from mixray.mix.schedule import segments

    two = spec(pools={"long": 1, "short": 1}, schedule={"kind": "phases", "phases": [
        {"fraction": 0.5}, {"fraction": 0.5}]})
    source = PoolStreams({"long": _ones(3), "short": _ones(100)}, repeats=1, seed=0)
    picks, short = interleave(segments(two), source, budget=20, whole=True)
    assert len(picks) == 20 and sum(p.pool == "long" for p in picks) == 3
    # long owes 5 rows by the end of phase 0 and 10 by the end of phase 1; it has 3
    assert short == [Shortfall("long", 0, 2.0), Shortfall("long", 1, 7.0)]
    # 10 rows are long's share exactly: used up near the end, but never behind
    enough = PoolStreams({"long": _ones(10), "short": _ones(100)}, repeats=1, seed=0)
    assert all(s.short_by <= 0 for s in interleave(segments(two), enough, 20, whole=True)[1])


def test_the_scarcest_pool_used_up_at_the_end_of_budget_all_did_not_run_dry() -> None:
    """Long rows overshoot long's phases, so long is used up early in its last phase and short
    fills the rest of it; long has supplied all the budget asks of it, though."""
    pools = {"long": pool("long", 10, 400), "short": pool("short", 3000, 4)}
    weights = [{"long": 1, "short": 0.01}, {"short": 1}] * 2 + [{"long": 1, "short": 0.01}]
    mix = spec(pools={"long": 1, "short": 1}, unit="tokens", on_pool_exhausted="error",
               schedule={"kind": "phases",
                         "phases": [{"fraction": 0.2, "weights": w} for w in weights]})
    m = build_manifest(pools, mix)
    assert m.card["pools"]["long"]["distinct_rows"] == 10  # used up
    last = m.card["phases"][-1]["pools"]
    assert last["long"]["tokens"] < 0.9 * last["long"]["requested_share"] * m.card["phases"][-1][
        "tokens"]  # short took part of long's place there
    assert m.card["ran_dry"] == [] and not m.card["pools"]["long"]["ran_dry"]


@pytest.fixture
def budget_past_the_checks(monkeypatch):
    """A budget of 20 rows whatever the pools hold, as if it had slipped past resolve_budget."""
    import mixray.mix.manifest as manifest

    monkeypatch.setattr(manifest, "resolve_budget", lambda *args: 20.0)


def test_a_pool_that_ran_dry_is_on_the_card_or_an_error(budget_past_the_checks) -> None:
    pools = {"long": pool("long", 3, 300), "short": pool("short", 100, 100)}
    fill = build_manifest(pools, spec(pools={"long": 1, "short": 1}, budget=20))
    card = fill.card
    assert card["ran_dry"] == [{"pool": "long", "phase": 0, "short_by": 7.0}]
    assert card["pools"]["long"]["ran_dry"] and not card["pools"]["short"]["ran_dry"]
    assert card["phases"][0]["pools"]["long"]["ran_dry"]
    assert counts(fill) == {"long": 3, "short": 17}  # the others filled in, as before
    with pytest.raises(ValueError, match=r"pool 'long' ran dry in phase 0: 7 samples short"):
        build_manifest(pools, spec(pools={"long": 1, "short": 1}, budget=20,
                                   on_pool_exhausted="error"))


def test_on_pool_exhausted_is_not_part_of_the_manifest_key() -> None:
    """It never changes a manifest: either the same rows or an error."""
    a = build_manifest(POOLS, spec(pools={"long": 1, "short": 4}))
    b = build_manifest(POOLS, spec(pools={"long": 1, "short": 4}, on_pool_exhausted="error"))
    assert a.content_hash == b.content_hash and a.table.equals(b.table)


def test_on_pool_exhausted_takes_fill_or_error() -> None:
    from pydantic import ValidationError

    assert MixSpec().on_pool_exhausted == "fill"
    with pytest.raises(ValidationError, match="on_pool_exhausted"):
        spec(on_pool_exhausted="skip")


def test_the_mix_stage_writes_manifest_card_and_validation_files(tmp_path) -> None:
    import pyarrow.parquet as pq

    from mixray.mix.stage import run_mix

    paths = {}
    for name, table in POOLS.items():
        paths[name] = tmp_path / f"{name}.parquet"
        pq.write_table(table, paths[name])
    out = run_mix(spec(pools={"long": 1, "short": 4}, validation_problems=5), paths,
                  tmp_path / "trial")
    manifest, validation = pq.read_table(out.manifest), pq.read_table(out.validation)
    held = set(validation["problem_id"].to_pylist())
    assert len(held) == 5 and validation.num_rows == 10  # both pools' responses to them
    assert not held & set(manifest["problem_id"].to_pylist())  # never trained on
    card = json.loads((tmp_path / "trial" / "data_card.json").read_text())
    assert card == out.card and card["rows"] == manifest.num_rows
    assert card["validation"] == {"problems": 5, "rows": 10}
    none = run_mix(spec(pools={"long": 1, "short": 4}), paths, tmp_path / "other")
    assert none.validation is None and not (tmp_path / "other" / "validation.parquet").exists()
