"""The mix section of a sweep file: its syntax, the long_share convenience, and errors that name
the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixray.config import SweepFileError, load_sweep
from mixray.mix.config import MixSpec

REPO = Path(__file__).resolve().parents[2]


def _load_with_mix(tmp_path: Path, mix: dict, **search) -> object:
    data = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    data["mix"] = mix
    data["search"] = {"long_share": [0.0, 0.5]} | search
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_sweep(path)


def test_full_syntax_loads(tmp_path) -> None:
    cfg = _load_with_mix(tmp_path, {
        "pools": {"long": 1, "short": 4}, "unit": "tokens", "budget": 5000, "max_repeats": 2,
        "long_pool": "long", "short_pool": "short", "seed": 3,
        "schedule": {"kind": "phases", "phases": [{"fraction": 0.25, "weights": {"short": 1}},
                                                  {"fraction": 0.75}]},
    })
    assert cfg.mix.long_share == pytest.approx(0.2)
    assert cfg.mix.schedule.phases[1].weights is None


@pytest.mark.parametrize(("mix", "search", "where", "expected"), [
    ({"pools": {"long": -0.1, "short": 1}}, {}, "mix.pools", ">= 0"),
    ({"pools": {"long": 0, "short": 0}}, {}, "mix.pools", "all weights are 0"),
    ({"pools": {"long": 1, "huge": 1}}, {}, "mix.pools", "'huge', which is not a teacher label"),
    ({"long_pool": "huge"}, {}, "mix.long_pool", "not a teacher label"),
    ({"pools": {"short": 1}}, {}, "mix.long_pool", "not in mix.pools"),
    ({"unit": "bytes"}, {}, "mix.unit", "'samples' or 'tokens'"),
    ({"budget": 0}, {}, "mix.budget", ">= 1"),
    ({"max_repeats": 0}, {}, "mix.max_repeats", "greater than or equal to 1"),
    ({"per_problem": True, "max_repeats": 2}, {}, "mix.max_repeats", "per_problem"),
    ({"pools": {"long": "0.2", "short": 0.8}}, {}, "mix.pools.long", "valid number"),
    ({"schedule": {"kind": "phases", "phases": [{"fraction": 0.5}, {"fraction": 0.4}]}}, {},
     "mix.schedule", "sum to 0.9, not 1"),
    ({"schedule": {"kind": "phases", "phases": [{"fraction": 1.0, "weights": {"long": 0}}]}}, {},
     "mix.schedule", "all weights are 0"),
    ({"schedule": {"kind": "ramp", "end": {"large": 1}}}, {}, "mix.schedule.end",
     "not in mix.pools"),
    ({"schedule": {"kind": "ramp"}}, {}, "mix.schedule", "start or end"),
    ({"schedule": {"kind": "spiral"}}, {}, "mix.schedule", "spiral"),
    ({"schedule": {"kind": "phases", "phases": [{"fraction": 1.0, "weights": {"long": 1}}]}}, {},
     "search.long_share", "all trials would be alike"),
])
def test_mix_mistakes_name_the_key(tmp_path, mix, search, where, expected) -> None:
    with pytest.raises(SweepFileError) as err:
        _load_with_mix(tmp_path, mix, **search)
    message = str(err.value)
    assert where in message and expected in message, message


def test_explicit_phases_are_fine_with_one_grid_value(tmp_path) -> None:
    fixed = {"schedule": {"kind": "phases", "phases": [{"fraction": 1.0, "weights": {"long": 1}}]}}
    assert _load_with_mix(tmp_path, fixed, long_share=[0.2]).mix.uses_base_mix() is False


@pytest.mark.parametrize(("pools", "share", "expected"), [
    ({"long": 0.2, "short": 0.8}, 0.5, {"long": 0.5, "short": 0.5}),
    ({"long": 0.2, "short": 0.6, "large": 0.2}, 0.6, {"long": 0.6, "short": 0.3, "large": 0.1}),
    ({"long": 1.0, "short": 0.0, "large": 0.0}, 0.25, {"long": 0.25, "short": 0.75, "large": 0.0}),
])
def test_with_long_share_rescales_the_other_pools(pools, share, expected) -> None:
    got = MixSpec(pools=pools).with_long_share(share)
    assert got.pools == pytest.approx(expected) and list(got.pools) == list(pools)
    assert got.long_share == pytest.approx(share)


def test_with_long_share_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MixSpec().with_long_share(1.5)
    with pytest.raises(ValueError, match="mix.long_pool 'long' is not in mix.pools"):
        MixSpec(pools={"large": 1, "short": 1}).with_long_share(0.2)
