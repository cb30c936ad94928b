"""A two-pool mix by share of samples -> an ordered, hashed manifest plus a data card.

"Share" means a share of the final mixture counted in samples; the data card also reports the
realised share in tokens. Rows are drawn without replacement, so the mixture is as large as the
scarcer pool allows at the requested share: N = min(L / s, S / (1 - s)).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mixray.config import MixConfig

COLUMNS = ("problem_id", "prompt", "completion", "n_tokens")


@dataclass(frozen=True)
class Manifest:
    table: pa.Table  # columns: pool, row, problem_id, prompt, completion, n_tokens — in train order
    card: dict

    @property
    def content_hash(self) -> str:
        return self.card["content_hash"]


def mixture_size(n_long: int, n_short: int, share: float) -> tuple[int, int]:
    """Largest (long, short) counts with long/(long+short) ≈ share, drawing without replacement."""
    if share <= 0.0:
        return 0, n_short
    if share >= 1.0:
        return n_long, 0
    total = math.floor(min(n_long / share, n_short / (1.0 - share)) + 1e-9)
    take_long = min(n_long, round(share * total))
    return take_long, min(n_short, total - take_long)


def build_manifest(pools: dict[str, pa.Table], cfg: MixConfig) -> Manifest:
    for name in (cfg.long_pool, cfg.short_pool):
        missing = [c for c in COLUMNS if c not in pools[name].column_names]
        if missing:
            raise ValueError(f"pool {name!r} lacks columns {missing}")
    long_t, short_t = pools[cfg.long_pool], pools[cfg.short_pool]
    k_long, k_short = mixture_size(long_t.num_rows, short_t.num_rows, cfg.long_share)
    if k_long + k_short == 0:
        raise ValueError(
            f"mix with long_share={cfg.long_share} is empty: pool {cfg.long_pool!r} has "
            f"{long_t.num_rows} rows, pool {cfg.short_pool!r} has {short_t.num_rows}"
        )
    rng = np.random.default_rng(cfg.seed)
    parts = []
    for name, table, k in ((cfg.long_pool, long_t, k_long), (cfg.short_pool, short_t, k_short)):
        rows = np.sort(rng.choice(table.num_rows, size=k, replace=False))
        part = table.select(list(COLUMNS)).take(pa.array(rows, pa.int64()))
        parts.append(
            part.add_column(0, "row", pa.array(rows, pa.int64())).add_column(
                0, "pool", pa.array([name] * k, pa.string())
            )
        )
    table = pa.concat_tables(parts)
    table = table.take(pa.array(rng.permutation(table.num_rows), pa.int64()))
    return Manifest(table, data_card(table, cfg))


def data_card(table: pa.Table, cfg: MixConfig) -> dict:
    pools = table["pool"].to_pylist()
    tokens = table["n_tokens"].to_numpy()
    h = hashlib.sha256()
    for pool, row in zip(pools, table["row"].to_pylist(), strict=True):
        h.update(f"{pool}:{row};".encode())
    card = {"requested_long_share": cfg.long_share, "rows": table.num_rows,
            "tokens": int(tokens.sum()), "content_hash": h.hexdigest()[:16], "pools": {}}
    for name in (cfg.long_pool, cfg.short_pool):
        mask = np.array([p == name for p in pools], dtype=bool)
        card["pools"][name] = {
            "samples": int(mask.sum()),
            "tokens": int(tokens[mask].sum()),
            "sample_share": float(mask.mean()) if len(mask) else 0.0,
            "token_share": float(tokens[mask].sum() / max(1, tokens.sum())),
        }
    return card
