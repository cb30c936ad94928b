"""The data card: what was asked of the mix and what the manifest holds, per pool and per phase.

Requested shares are in the spec's unit; realised shares are reported in both samples and tokens,
since a mix even in samples is far from even in tokens when one teacher writes 3x longer answers.
`ran_dry` lists the pools that were used up short of their share (manifest.py), each with the
phase and by how much; the pool and phase entries say `ran_dry` too. The caller writes the card
next to the manifest and logs it to MLflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from mixray.mix.config import LengthOrderSchedule, MixSpec
from mixray.mix.sampler import Shortfall
from mixray.mix.schedule import Segment, demand


def data_card(table: pa.Table, spec: MixSpec, segs: list[Segment], budget: float,
              pools: dict[str, pa.Table], dry: list[Shortfall]) -> dict[str, Any]:
    """The card without its content_hash (the builder adds it). `dry`: the pools that ran dry,
    by sampler segment (a length curriculum's single segment is the whole run, phase None)."""
    pool = np.array(table["pool"].to_pylist(), dtype=object)
    tokens = table["n_tokens"].to_numpy().astype(np.int64)
    phase = table["phase"].to_numpy()
    realised = len(pool) if spec.unit == "samples" else int(tokens.sum())
    want = demand(segs)
    card: dict[str, Any] = {
        "rows": len(pool), "tokens": int(tokens.sum()), "unit": spec.unit,
        "schedule": spec.schedule.kind, "per_problem": spec.per_problem, "seed": spec.seed,
        "problems": len(set(table["problem_id"].to_pylist())),
        "budget": {"requested": spec.budget, "resolved": budget, "realised": realised},
        "pools": {},
        "phases": [],
        "ran_dry": [{"pool": s.pool, "phase": _dry_phase(s, spec), "short_by": s.short_by}
                    for s in dry],
    }
    everything = np.ones(len(pool), dtype=bool)
    for name, source in pools.items():
        mine = pool == name
        rows = table["row"].to_numpy()[mine]
        card["pools"][name] = {
            "requested_share": want[name], **_shares(everything, mine, tokens),
            "available_rows": source.num_rows, "distinct_rows": len(np.unique(rows)),
            "max_uses": int(np.unique(rows, return_counts=True)[1].max()) if len(rows) else 0,
            "ran_dry": any(s.pool == name for s in dry),
        }
    card["phases"] = [_phase(i, segs, spec, pool, tokens, phase == i, list(pools))
                      for i in range(_phase_count(spec, segs))]
    for entry in card["ran_dry"]:
        if entry["phase"] is not None:
            card["phases"][entry["phase"]]["pools"][entry["pool"]]["ran_dry"] = True
    return card


def _dry_phase(s: Shortfall, spec: MixSpec) -> int | None:
    # a length curriculum is mixed as one segment and then sorted: its phases are length slices
    return None if isinstance(spec.schedule, LengthOrderSchedule) else s.phase


def _phase_count(spec: MixSpec, segs: list[Segment]) -> int:
    schedule = spec.schedule
    return schedule.segments if isinstance(schedule, LengthOrderSchedule) else len(segs)


def _phase(i: int, segs: list[Segment], spec: MixSpec, pool: np.ndarray, tokens: np.ndarray,
           inside: np.ndarray, names: list[str]) -> dict[str, Any]:
    # a length curriculum requests its mix over the whole run only; its slices drift by design
    seg = None if isinstance(spec.schedule, LengthOrderSchedule) else segs[i]
    total = np.ones(len(pool), dtype=bool)
    share = "sample_share" if spec.unit == "samples" else "token_share"
    return {
        "phase": i,
        "requested_fraction": seg.fraction if seg else 1 / _phase_count(spec, segs),
        "realised_fraction": _shares(total, inside, tokens)[share],
        "samples": int(inside.sum()), "tokens": int(tokens[inside].sum()),
        "pools": {name: {"requested_share": seg.mean_weight(name) if seg else None,
                         **_shares(inside, inside & (pool == name), tokens), "ran_dry": False}
                  for name in names},
    }


def _shares(within: np.ndarray, mine: np.ndarray, tokens: np.ndarray) -> dict[str, Any]:
    """Samples and tokens of `mine`, and their shares of `within`."""
    n, t = int(mine.sum()), int(tokens[mine].sum())
    return {"samples": n, "tokens": t,
            "sample_share": n / max(1, int(within.sum())),
            "token_share": t / max(1, int(tokens[within].sum()))}
