"""Held-out validation problems: a few problems, with every pool's responses to them, left out of
every trial's mix. The loss on them (train.eval_every) compares trials that mix the pools
differently, which the training loss cannot (each trial's comes from its own mix): it is what
ASHA judges trials by when its metric is val_loss.

The problems depend on the pools' content and the seed only, never on the weights or schedule,
so every trial of a sweep over the same pools holds out the same ones.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from mixray.mix.manifest import COLUMNS
from mixray.mix.sampler import rng_for


def split_validation(pools: dict[str, pa.Table], n_problems: int,
                     seed: int) -> tuple[dict[str, pa.Table], pa.Table]:
    """(the pools without the held-out problems, the held-out rows with a `pool` column).

    The problems are drawn from those present in every pool, so each has every pool's
    responses (all of them, when a teacher wrote several). ValueError when too few are shared.
    """
    shared = sorted(set.intersection(*(set(t["problem_id"].to_pylist()) for t in pools.values())))
    if n_problems > len(shared):
        raise ValueError(f"mix.validation_problems is {n_problems}, but only {len(shared)} "
                         f"problems have a response in every pool of {sorted(pools)}")
    order = rng_for(seed, "validation").permutation(len(shared))
    held = pa.array(sorted(shared[i] for i in order[:n_problems]), pa.string())
    train, parts = {}, []
    for name, table in pools.items():
        is_held = pc.is_in(table["problem_id"], value_set=held)
        train[name] = table.filter(pc.invert(is_held))
        part = table.filter(is_held).select(list(COLUMNS))
        parts.append(part.append_column("pool", pa.array([name] * part.num_rows, pa.string())))
    return train, pa.concat_tables(parts, promote_options="permissive")
