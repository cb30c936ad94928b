"""Keyed, atomically committed stage outputs under the run root.

A stage's output lives in ``<run_root>/artifacts/<stage>/<key>/`` where ``key`` is a hash of the
spec that determines the output's bytes (inputs' keys, model, prompt, sampling, seed, ...). The
spec is written beside the data as ``spec.json``. A directory counts only once ``_COMMITTED``
exists; stages write into a sibling temp dir and rename it into place, so a killed stage leaves no
half-written output that a rerun could mistake for a finished one.

`StageRecord` and `TeacherRecord` say what a sweep made of them before its trials (where,
reused or not, the stats): typed in code, a JSON document in summary.json (`teacher_records`
reads it back).

Local paths only for now; URIs (s3://, gs://) on clusters are a later step (DESIGN.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixray.runroot import RunRoot

MARKER = "_COMMITTED"


def spec_key(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able spec (key order does not matter)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageDir:
    """Where one keyed stage output lives. Constructing it touches no disk."""

    root: Path
    stage: str
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        return spec_key(self.spec)

    @property
    def path(self) -> Path:
        return RunRoot(self.root).artifact(self.stage, self.key)

    def is_committed(self) -> bool:
        return (self.path / MARKER).exists()

    def staging(self) -> Path:
        """A fresh temp dir next to the final one, to be filled and then `commit`ted."""
        tmp = self.path.parent / f".tmp-{self.key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    @contextmanager
    def locked(self) -> Iterator[None]:
        """This key to oneself while the block runs: an exclusive lock (flock, which NFSv4 and
        EFS honour) on a file beside the output. Two processes making the same output at once
        (two trials whose judges are asked the same questions) take turns, and the second finds
        it committed; without it both wrote into one `partial` dir and one lost its part files
        (seen: a rehearsal trial failed with FileNotFoundError and Tune ran it again)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".lock-{self.key}", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def partial(self) -> Path:
        """A stable work dir for this key, for stages that resume: a killed run's finished
        parts stay there for the rerun, which adds only what is missing, then `commit`s it."""
        work = self.path.parent / f".partial-{self.key}"
        work.mkdir(parents=True, exist_ok=True)
        return work

    def reopen(self) -> Path:
        """Move the committed output back to its `partial` work dir (one rename), for a stage
        that resumes into it; a rerun then `commit`s it again under the same key."""
        assert self.is_committed(), f"{self.path} is not committed"
        work = self.path.parent / f".partial-{self.key}"
        self.path.rename(work)  # a leftover work dir of the same key must be empty
        for name in (MARKER, "spec.json"):
            (work / name).unlink()
        return work

    def commit(self, tmp: Path) -> Path:
        (tmp / "spec.json").write_text(json.dumps(self.spec, indent=2, sort_keys=True, default=str))
        (tmp / MARKER).write_text("")
        if self.path.exists():  # an uncommitted leftover of a killed run
            assert not self.is_committed(), f"{self.path} is already committed"
            shutil.rmtree(self.path)
        tmp.rename(self.path)
        return self.path


@dataclass(frozen=True)
class StageRecord:
    """One upstream stage's output: where it is, whether an earlier run's was reused, and its
    stats (a reused generation has none: it generated nothing now)."""

    path: Path
    cached: bool
    stats: dict[str, Any] | None

    def document(self) -> dict[str, Any]:
        return {"path": str(self.path), "cached": self.cached, "stats": self.stats}


@dataclass(frozen=True)
class TeacherRecord:
    """One teacher's generation and its curation, whose pool the trials mix."""

    generate: StageRecord
    curate: StageRecord  # stats: rows, accepted, error and acceptance rates (curate.stage)

    @property
    def pool(self) -> Path:
        return self.curate.path / "pool.parquet"


def teacher_records(stages: dict[str, dict[str, Any]]) -> dict[str, TeacherRecord]:
    """The teachers of a stages document (`Upstream.stages`, e.g. read back from summary.json)."""
    def record(d: dict[str, Any]) -> StageRecord:
        return StageRecord(Path(d["path"]), d["cached"], d["stats"])

    return {key.removeprefix("generate."): TeacherRecord(
                record(d), record(stages["curate." + key.removeprefix("generate.")]))
            for key, d in stages.items() if key.startswith("generate.")}
