"""Problem sources -> Parquet ``{problem_id, problem, answer, source, meta}``.

Only reasoning-gym for now (seeded, offline). Training and held-out problems come from different
seeds and are checked to share no question text, so evaluation never scores a trained-on problem.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mixray.artifacts import StageDir
from mixray.config import ProblemsConfig

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("problem", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),  # JSON of the generator's metadata
    ]
)
REQUIRED = ("problem_id", "problem", "answer")
# The held-out split uses a seed this far from the training seed, so the two never coincide.
EVAL_SEED_OFFSET = 1_000_003


def _reasoning_gym_rows(cfg: ProblemsConfig, split: str, size: int, seed: int) -> list[dict]:
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(cfg.task, size=size, seed=seed, **cfg.task_args)
    rows = []
    for i, item in enumerate(dataset):
        rows.append(
            {
                "problem_id": f"{cfg.task}/{split}/{seed}/{i}",
                "problem": str(item["question"]),
                "answer": str(item["answer"]),
                "source": f"reasoning_gym:{cfg.task}",
                "meta": json.dumps(item.get("metadata", {}), default=str, sort_keys=True),
            }
        )
    return rows


def problems_stage(cfg: ProblemsConfig, run_root: Path) -> StageDir:
    """The keyed output dir holding ``train.parquet`` and ``eval.parquet``."""
    return StageDir(run_root, "problems", {"version": 1, **cfg.model_dump()})


def build_problems(cfg: ProblemsConfig, run_root: Path) -> tuple[StageDir, bool]:
    """Write the training and held-out problem sets; returns (where, reused_from_cache)."""
    stage = problems_stage(cfg, run_root)
    if stage.is_committed():
        return stage, True
    train = _reasoning_gym_rows(cfg, "train", cfg.train_size, cfg.seed)
    held = _reasoning_gym_rows(cfg, "eval", cfg.eval_size * 2, cfg.seed + EVAL_SEED_OFFSET)
    seen = {r["problem"] for r in train}
    held = [r for r in held if r["problem"] not in seen][: cfg.eval_size]
    if len(held) < cfg.eval_size:
        raise ValueError(
            f"problems.task {cfg.task!r} yields only {len(held)} held-out problems distinct from "
            f"the training ones (asked for {cfg.eval_size}); widen task_args or shrink eval_size"
        )
    tmp = stage.staging()
    pq.write_table(pa.Table.from_pylist(train, SCHEMA), tmp / "train.parquet")
    pq.write_table(pa.Table.from_pylist(held, SCHEMA), tmp / "eval.parquet")
    log.info("problems: %d train, %d held-out from %s", len(train), len(held), cfg.task)
    stage.commit(tmp)
    return stage, False


def read_problems(path: Path) -> pa.Table:
    table = pq.read_table(path)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: problem file lacks required columns {missing}")
    return table
