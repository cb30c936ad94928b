"""Training problems that overlap an evaluation benchmark, dropped (or refused) before any
generation: a problem the teachers solve and the students train on, when it is also on a
benchmark, inflates every score the sweep reports.

The rule is open-r1's (`scripts/decontaminate.py`, after s1's `decontaminate_util.py`), chosen
because it is the one the distillation work this system reproduces uses: texts normalised
(lower case, runs of whitespace as one space), a training problem overlaps a benchmark when they
share a run of ``ngram`` (8) words. Ours adds one case their rule misses: a text shorter than
``ngram`` words has no 8-word run, so it overlaps when the whole normalised text is the same
(MATH has such problems: "Compute $\\dbinom{8}{4}$.").

`decontaminate` is a stage: it reads the problems stage's output and the benchmarks' problem
texts and writes the same layout (train.parquet without the overlapping problems, eval.parquet
and bad_rows.parquet as they were, summary.json with the counts per benchmark, and the dropped
problems with the benchmarks they overlap in dropped.parquet), keyed by the problems' key, the
benchmarks' texts and the rule, so later stages use it in the problems' place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mixray.artifacts import StageDir
from mixray.problems.config import DecontaminateConfig

log = logging.getLogger(__name__)
VERSION = 1
RULE = ("open-r1 (after s1): a shared run of {n} words of the lower-cased, whitespace-normalised "
        "texts, or the same whole text when shorter")


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def ngrams(text: str, n: int) -> set[str]:
    """The runs of ``n`` words of a normalised text; the whole text when it is shorter."""
    words = text.split()
    if len(words) < n:
        return {text} if text else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def overlaps(train: list[str], benchmarks: dict[str, list[str]], n: int) -> dict[str, list[int]]:
    """Benchmark name -> the indices of the training problems that overlap it."""
    grams = [ngrams(normalize(t), n) for t in train]
    found: dict[str, list[int]] = {}
    for name, texts in benchmarks.items():
        lookup = set().union(*(ngrams(normalize(t), n) for t in texts)) if texts else set()
        found[name] = [i for i, g in enumerate(grams) if not g.isdisjoint(lookup)]
    return found


def decontaminate_stage(problems: StageDir, benchmarks: dict[str, list[str]],
                        cfg: DecontaminateConfig, run_root: Path) -> StageDir:
    """Keyed by what decides which problems are dropped: the problems, every benchmark's texts
    (a digest), the rule; the mode only decides whether an overlap is an error."""
    digests = {name: hashlib.sha256("\n".join(sorted(normalize(t) for t in texts)).encode()
                                    ).hexdigest()[:16] for name, texts in benchmarks.items()}
    spec = {"version": VERSION, "problems": problems.key, "benchmarks": digests,
            "ngram": cfg.ngram}
    return StageDir(run_root, "decontaminate", spec)


def decontaminate(problems: StageDir, benchmarks: dict[str, list[str]],
                  cfg: DecontaminateConfig, run_root: Path) -> StageDir:
    """The problems without those that overlap a benchmark (mode drop), the problems as they
    are (mode off), or a ValueError naming the overlaps before any work (mode error)."""
    if cfg.mode == "off":
        return problems
    stage = decontaminate_stage(problems, benchmarks, cfg, run_root)
    if stage.is_committed():
        _refuse_if_asked(cfg, _summary(stage)["decontamination"]["dropped"])
        return stage
    train = pq.read_table(problems.path / "train.parquet")
    found = overlaps([str(t) for t in train["problem"].to_pylist()], benchmarks, cfg.ngram)
    _refuse_if_asked(cfg, {name: len(rows) for name, rows in found.items()})
    dropped = sorted(set().union(*found.values())) if found else []
    tmp = stage.staging()
    gone = set(dropped)
    keep = [i for i in range(train.num_rows) if i not in gone]
    pq.write_table(train.take(pa.array(keep, pa.int64())), tmp / "train.parquet")
    for name in ("eval.parquet", "bad_rows.parquet"):
        shutil.copyfile(problems.path / name, tmp / name)
    pq.write_table(_dropped(train, dropped, found), tmp / "dropped.parquet")
    summary = _summary(problems) | {"train": len(keep), "decontamination": {
        "rule": RULE.format(n=cfg.ngram), "train_before": train.num_rows,
        "dropped": {name: len(rows) for name, rows in found.items()},
        "dropped_total": len(dropped)}}
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("problems: %d of %d training problems overlap a benchmark and are set aside (%s)",
             len(dropped), train.num_rows,
             ", ".join(f"{name} {len(rows)}" for name, rows in found.items()) or "no benchmarks")
    if len(dropped) > train.num_rows / 2:
        # templated synthetic problems (reasoning-gym tasks) share their fixed phrasing
        log.warning("problems: %d of %d training problems overlap a benchmark: if the problems "
                    "share a template with it, raise problems.decontaminate.ngram above the "
                    "template's fixed runs of words", len(dropped), train.num_rows)
    stage.commit(tmp)
    return stage


def _refuse_if_asked(cfg: DecontaminateConfig, counts: dict[str, int]) -> None:
    if cfg.mode == "error" and any(counts.values()):
        raise ValueError("problems.decontaminate.mode is error and training problems overlap "
                         "the evaluation: " + ", ".join(f"{n} {c}" for n, c in counts.items() if c)
                         + f" ({RULE.format(n=cfg.ngram)}); use mode drop to set them aside")


def _dropped(train: pa.Table, dropped: list[int], found: dict[str, list[int]]) -> pa.Table:
    """The dropped training problems, each with the benchmarks it overlaps."""
    sets = {name: set(rows) for name, rows in found.items()}
    by_row = {i: sorted(name for name, rows in sets.items() if i in rows) for i in dropped}
    table = train.take(pa.array(dropped, pa.int64()))
    return table.append_column("benchmarks", pa.array([", ".join(by_row[i]) for i in dropped],
                                                       pa.string()))


def _summary(stage: StageDir) -> dict:
    return json.loads((stage.path / "summary.json").read_text())
