"""The mix stage: a trial's curated pools -> its training manifest, held-out validation rows and
data card, as files in the trial's folder (the train stage reads them, never live objects).

What lands in ``out``: ``manifest.parquet`` (rows in training order, `build_manifest`),
``data_card.json`` (requested and realised shares, dry pools, the content hash) and, when the mix
holds problems out (``mix.validation_problems``), ``validation.parquet`` (every pool's responses
to them; they never enter the manifest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mixray.mix.config import MixSpec
from mixray.mix.manifest import build_manifest
from mixray.mix.validation import split_validation


@dataclass(frozen=True)
class MixOutput:
    """Where the stage wrote its files, and the card it wrote (also logged to MLflow)."""

    manifest: Path
    validation: Path | None
    card: dict[str, Any]


def run_mix(spec: MixSpec, pools: dict[str, Path], out: Path,
            decontamination: dict[str, Any] | None = None) -> MixOutput:
    """Mix ``pools`` (teacher label -> pool.parquet) as ``spec`` says into ``out``.
    ``decontamination``: what was set aside of the problems the pools were generated from (the
    sweep's, `mixray.problems.decontaminate`), recorded in the card as it is."""
    out.mkdir(parents=True, exist_ok=True)
    tables = {label: pq.read_table(pools[label]) for label in spec.pools}
    validation = None
    if spec.validation_problems:
        tables, held_out = split_validation(tables, spec.validation_problems, spec.seed)
        validation = out / "validation.parquet"
        pq.write_table(held_out, validation)
    manifest = build_manifest(tables, spec)
    if validation is not None:
        manifest.card["validation"] = {"problems": spec.validation_problems,
                                       "rows": held_out.num_rows}
    if decontamination is not None:
        manifest.card["decontamination"] = decontamination
    pq.write_table(manifest.table, out / "manifest.parquet")
    (out / "data_card.json").write_text(json.dumps(manifest.card, indent=2))
    return MixOutput(out / "manifest.parquet", validation, manifest.card)
