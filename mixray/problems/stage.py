"""The problems stage: problem sources -> Parquet ``{problem_id, problem, answer, source, meta}``.

Two sources (`ProblemsConfig.source`):

``reasoning_gym``  seeded, offline. Training and held-out problems come from different seeds and
                   are checked to share no question text.
``dataset``        a hub dataset (``hf:owner/name``) or a local jsonl/json/parquet file, read with
                   `mixray.problems.datasets` (field mapping, answer transform, bad rows with
                   reasons). Held-out problems come from their own split or file, or are carved
                   out of the training source by the seed; ``train_size`` problems are drawn by
                   the seed from what is left. Records that cannot be used (a missing field, no
                   answer, a repeated id or problem text, a held-out problem that is also a
                   training one) are never dropped silently: they are counted and written aside.
                   A hub dataset is read once into ``<run_root>/datasets`` and from there after
                   (`mixray.problems.datasets.read_hub_cached`).

What the stage folder holds: ``train.parquet``, ``eval.parquet``, ``bad_rows.parquet``
(split, source, index, reason, record as JSON; empty when every record was usable) and
``summary.json`` (counts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixray.artifacts import StageDir
from mixray.problems.config import DatasetSource, ProblemsConfig, ReasoningGymSource
from mixray.problems.datasets import HUB_CACHE_DIR, read_records, source_name, usable_rows

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),
        ("problem", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),  # JSON: the generator's metadata, or the record's split and index
    ]
)
BAD_SCHEMA = pa.schema(
    [
        ("split", pa.string()),  # train | eval: which of our sets the record was read for
        ("source", pa.string()),
        ("index", pa.int64()),  # the record's position in its source
        ("reason", pa.string()),
        ("record", pa.string()),  # JSON, cut at 2000 characters
    ]
)
REQUIRED = ("problem_id", "problem", "answer")
# The held-out split uses a seed this far from the training seed, so the two never coincide.
EVAL_SEED_OFFSET = 1_000_003
HASH_CHUNK = 1 << 20


def _reasoning_gym_rows(src: ReasoningGymSource, split: str, size: int, seed: int) -> list[dict]:
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(src.task, size=size, seed=seed, **src.task_args)
    rows = []
    for i, item in enumerate(dataset):
        rows.append(
            {
                "problem_id": f"{src.task}/{split}/{seed}/{i}",
                "problem": str(item["question"]),
                "answer": str(item["answer"]),
                "source": f"reasoning_gym:{src.task}",
                "meta": json.dumps(item.get("metadata", {}), default=str, sort_keys=True),
            }
        )
    return rows


def _file_sha256(path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"problems.source: no such file {file}")
    h = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def problems_stage(cfg: ProblemsConfig, run_root: Path) -> StageDir:
    """The keyed output dir holding ``train.parquet`` and ``eval.parquet``: keyed by the source
    and the sizes. A dataset key also holds the sha256 of each local file read, so an edited
    file is read again; hub datasets are keyed by id, config and split (pin one to a commit
    with ``hf:owner/name@revision``, which is part of the key).
    """
    src = cfg.source
    spec = {"version": 1, "source": src.model_dump(), "train_size": cfg.train_size,
            "eval_size": cfg.eval_size, "seed": cfg.seed}
    if isinstance(src, DatasetSource):
        local = sorted({p for p in (src.path, src.eval_path) if p and not p.startswith("hf:")})
        spec["files"] = {p: _file_sha256(p) for p in local}
    return StageDir(run_root, "problems", spec)


def build_problems(cfg: ProblemsConfig, run_root: Path) -> tuple[StageDir, bool]:
    """Write the training and held-out problem sets; returns (where, reused_from_cache)."""
    stage = problems_stage(cfg, run_root)
    if stage.is_committed():
        return stage, True
    if isinstance(cfg.source, ReasoningGymSource):
        train, held, bad = _reasoning_gym_sets(cfg, cfg.source)
    else:
        train, held, bad = _dataset_sets(cfg, cfg.source, run_root / HUB_CACHE_DIR)
    tmp = stage.staging()
    pq.write_table(pa.Table.from_pylist(train, SCHEMA), tmp / "train.parquet")
    pq.write_table(pa.Table.from_pylist(held, SCHEMA), tmp / "eval.parquet")
    pq.write_table(pa.Table.from_pylist(bad, BAD_SCHEMA), tmp / "bad_rows.parquet")
    summary = {"source": cfg.describe(), "train": len(train), "eval": len(held),
               "bad_rows": len(bad), "bad_rows_by_split": dict(Counter(b["split"] for b in bad))}
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("problems: %d train, %d held-out, %d unusable records (%s)", len(train), len(held),
             len(bad), cfg.describe())
    if bad:
        log.warning("problems: %d records unusable, written aside with their reasons to "
                    "%s/bad_rows.parquet", len(bad), stage.path)
    stage.commit(tmp)
    return stage, False


def problems_summary(stage: StageDir) -> dict[str, Any]:
    """The counts of a committed problems stage (its ``summary.json``)."""
    return json.loads((stage.path / "summary.json").read_text())


def _reasoning_gym_sets(cfg: ProblemsConfig, src: ReasoningGymSource
                        ) -> tuple[list[dict], list[dict], list[dict]]:
    assert isinstance(cfg.train_size, int) and isinstance(cfg.eval_size, int), "validated"
    train = _reasoning_gym_rows(src, "train", cfg.train_size, cfg.seed)
    held = _reasoning_gym_rows(src, "eval", cfg.eval_size * 2, cfg.seed + EVAL_SEED_OFFSET)
    seen = {r["problem"] for r in train}
    held = [r for r in held if r["problem"] not in seen][: cfg.eval_size]
    if len(held) < cfg.eval_size:
        raise ValueError(
            f"problems.source.task {src.task!r} yields only {len(held)} held-out problems "
            f"distinct from the training ones (asked for {cfg.eval_size}); widen task_args or "
            "shrink eval_size"
        )
    return train, held, []


# --- dataset sources ------------------------------------------------------------------------


def _name(path: str, split: str) -> str:
    """A problem-id prefix: the dataset's or file's name (without a pinned revision, so ids stay
    the same across revisions), plus the split of a hub dataset."""
    if path.startswith("hf:"):
        base = path[3:].partition("@")[0].rsplit("/", 1)[-1]
    else:
        base = Path(path).stem
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", base).strip("_") or "problems"
    return f"{base}-{split}" if path.startswith("hf:") else base


def _read(src: DatasetSource, path: str, split: str, name: str, which: str, cache: Path
          ) -> tuple[list[dict], list[dict]]:
    """(problem rows with their record index, bad rows) of one source, in record order.
    Records are read and mapped by `datasets` (a hub dataset through ``cache``); a problem text
    seen before is a bad row here too."""
    try:
        records = read_records(path, src.config, split, cache=cache)
        good, bad_rows = usable_rows(name, records, src.fields, src.answer_transform, "lenient",
                                     source=source_name(path, src.config, split))
    except ValueError as e:
        raise ValueError(f"problems.source ({which} problems): {e}") from e
    where = path + (f" [{split}]" if path.startswith("hf:") else "")
    bad = [{"split": which, "source": where, "index": b["index"], "reason": b["reason"],
            "record": b["record"]} for b in bad_rows]
    # map_records keeps record order and skips bad records: the good rows' record indices are
    # the indices not among the bad ones.
    bad_index = {b["index"] for b in bad_rows}
    good_index = [i for i in range(len(good) + len(bad_index)) if i not in bad_index]
    assert len(good_index) == len(good), "rows and bad rows partition the records"
    rows, first = [], {}
    for i, row in zip(good_index, good, strict=True):
        if row["problem"] in first:
            bad.append({"split": which, "source": where, "index": i,
                        "reason": f"repeats the problem text of {first[row['problem']]!r}",
                        "record": json.dumps(row)})
            continue
        first[row["problem"]] = row["problem_id"]
        rows.append(row | {"source": f"dataset:{where}",
                           "meta": json.dumps({"index": i, "split": split})})
    return rows, bad


def _draw(rows: list[dict], size: int | str, rng: np.random.Generator) -> list[dict]:
    """``size`` rows (all for 'all') drawn by ``rng``, kept in source order."""
    if size == "all":
        return list(rows)
    assert isinstance(size, int) and size <= len(rows), (size, len(rows))
    return [rows[i] for i in sorted(rng.permutation(len(rows))[:size])]


def _too_few(what: str, have: int, want: int, bad: list[dict]) -> ValueError:
    reasons = Counter(b["reason"].split(" (")[0] for b in bad).most_common(3)
    why = f"; unusable records: {len(bad)} ({', '.join(f'{r}: {n}' for r, n in reasons)})" \
        if bad else ""
    return ValueError(f"problems: the source has {have} usable {what}, fewer than the {want} "
                      f"asked for{why}; lower problems.train_size / eval_size")


def _dataset_sets(cfg: ProblemsConfig, src: DatasetSource, cache: Path
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    # Separate streams for the two draws, so changing one size never reshuffles the other set.
    train_rng = np.random.default_rng([cfg.seed, 0])
    eval_rng = np.random.default_rng([cfg.seed, 1])
    name = _name(src.path, src.split)
    pool, bad = _read(src, src.path, src.split, name, "train", cache)
    if not src.separate_eval:
        assert isinstance(cfg.eval_size, int), "validated: carving needs a count"
        want = cfg.eval_size + (1 if cfg.train_size == "all" else cfg.train_size)
        if len(pool) < want:
            raise _too_few("records to carve held-out and training problems from", len(pool),
                           want, bad)
        order = eval_rng.permutation(len(pool))
        held = [pool[i] for i in sorted(order[: cfg.eval_size])]
        rest = [pool[i] for i in sorted(order[cfg.eval_size:])]
        return _draw(rest, cfg.train_size, train_rng), held, bad

    if cfg.train_size != "all" and len(pool) < cfg.train_size:
        raise _too_few("training problems", len(pool), cfg.train_size, bad)
    train = _draw(pool, cfg.train_size, train_rng)
    eval_path, eval_split = src.eval_source
    eval_name = _name(eval_path, eval_split)
    if eval_name == name:
        eval_name = f"{name}-eval"
    candidates, eval_bad = _read(src, eval_path, eval_split, eval_name, "eval", cache)
    trained = {r["problem"]: r["problem_id"] for r in train}
    held = []
    for row in candidates:
        if row["problem"] in trained:
            eval_bad.append({"split": "eval", "source": row["source"].removeprefix("dataset:"),
                             "index": json.loads(row["meta"])["index"],
                             "reason": f"also the training problem {trained[row['problem']]!r}",
                             "record": json.dumps({k: row[k] for k in REQUIRED})})
        else:
            held.append(row)
    if cfg.eval_size != "all" and len(held) < cfg.eval_size:
        raise _too_few("held-out problems", len(held), cfg.eval_size, eval_bad)
    return train, _draw(held, cfg.eval_size, eval_rng), bad + eval_bad


def read_problems(path: Path) -> pa.Table:
    table = pq.read_table(path)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: problem file lacks required columns {missing}")
    return table
