"""The two-pool mix: realised shares, determinism, hashing, clear errors."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mixray.config import MixConfig
from mixray.mix.manifest import build_manifest, mixture_size


def _pool(name: str, n: int, tokens: int) -> pa.Table:
    return pa.table({
        "problem_id": [f"p{i}" for i in range(n)],
        "prompt": [f"q{i}" for i in range(n)],
        "completion": [f"{name} answer {i}" for i in range(n)],
        "n_tokens": [tokens] * n,
    })


POOLS = {"long": _pool("long", 50, 300), "short": _pool("short", 100, 100)}


@pytest.mark.parametrize(("share", "expected"), [(0.0, (0, 100)), (1.0, (50, 0)), (0.2, (25, 100)),
                                                 (0.5, (50, 50)), (0.8, (50, 12))])
def test_mixture_size_uses_the_scarcer_pool(share, expected) -> None:
    assert mixture_size(50, 100, share) == expected


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5, 1.0])
def test_realised_share_in_samples_and_tokens(share: float) -> None:
    m = build_manifest(POOLS, MixConfig(long_share=share))
    card = m.card
    assert card["rows"] == m.table.num_rows == sum(p["samples"] for p in card["pools"].values())
    assert card["pools"]["long"]["sample_share"] == pytest.approx(share, abs=0.01)
    long_tokens = card["pools"]["long"]["samples"] * 300
    assert card["pools"]["long"]["tokens"] == long_tokens
    assert card["pools"]["long"]["token_share"] == pytest.approx(long_tokens / max(1, card["tokens"]))
    # without replacement: no row of a pool appears twice
    keys = list(zip(m.table["pool"].to_pylist(), m.table["row"].to_pylist(), strict=True))
    assert len(set(keys)) == len(keys)


def test_same_seed_same_hash_other_seed_other_order() -> None:
    a = build_manifest(POOLS, MixConfig(long_share=0.2, seed=1))
    b = build_manifest(POOLS, MixConfig(long_share=0.2, seed=1))
    c = build_manifest(POOLS, MixConfig(long_share=0.2, seed=2))
    assert a.content_hash == b.content_hash
    assert a.table.equals(b.table)
    assert c.content_hash != a.content_hash


def test_empty_mix_is_a_clear_error() -> None:
    empty = {"long": _pool("long", 0, 1), "short": _pool("short", 0, 1)}
    with pytest.raises(ValueError, match="empty"):
        build_manifest(empty, MixConfig(long_share=0.2))
