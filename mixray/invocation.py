"""One run of a sweep (an invocation) and its state on disk, which `--resume` reads back.

Each invocation has a folder ``<run root>/sweeps/<name>/<id>/`` holding ``state.json`` (the
resume key, the MLflow parent run, the status) and, once it ends, ``summary.json``; its trials
write under ``<run root>/trials/<id>/<trial>/`` (`trial_dir`), its baselines under
``<run root>/trials/<id>/_baselines/``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mixray.config import SweepConfig


@dataclass
class Invocation:
    """One run of a sweep: its id, its MLflow parent and its status, kept in state.json so that
    `--resume` can find an interrupted run and continue it under the same parent."""

    dir: Path
    resume_key: str
    parent_run_id: str | None = None
    status: str = "running"  # running | finished | failed | interrupted

    @property
    def id(self) -> str:
        return self.dir.name

    @classmethod
    def new(cls, cfg: SweepConfig) -> Invocation:
        invocation_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        return cls(cfg.run_root_path / "sweeps" / cfg.name / invocation_id, cfg.resume_key())

    @classmethod
    def latest_unfinished(cls, cfg: SweepConfig) -> Invocation:
        states = sorted((cfg.run_root_path / "sweeps" / cfg.name).glob("*/state.json"))
        for path in reversed(states):
            state = json.loads(path.read_text())
            if state["status"] == "finished":
                continue
            if state["resume_key"] != cfg.resume_key():
                raise ValueError(
                    f"--resume: the interrupted run {path.parent.name} of sweep {cfg.name!r} "
                    "used a different configuration (only search and resources may change); "
                    "run without --resume to start a new sweep")
            return cls(path.parent, state["resume_key"], state["parent_run_id"], state["status"])
        raise ValueError(f"--resume: sweep {cfg.name!r} has no interrupted run under "
                         f"{cfg.run_root_path / 'sweeps' / cfg.name}")

    def trial_dir(self, trial: str) -> Path:
        """Where a trial of this invocation writes its mix and evaluation."""
        return trial_dir(self.dir.parents[2], self.id, trial)

    def save(self, status: str) -> None:
        self.status = status
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"resume_key": self.resume_key, "parent_run_id": self.parent_run_id,
                 "status": status}
        (self.dir / "state.json").write_text(json.dumps(state, indent=2))


def trial_dir(run_root: Path, invocation: str, trial: str) -> Path:
    """Where a trial of an invocation writes (mixray.tune.run_trial): its mix, its evaluation;
    the same on --resume (same invocation)."""
    return run_root / "trials" / invocation / trial


def git_commit() -> str:
    """The commit of the checkout the sweep runs from ('unknown' outside git, e.g. a Ray job's
    uploaded working dir, which carries no .git)."""
    head = Path(__file__).resolve().parent.parent / ".git"
    try:
        ref = (head / "HEAD").read_text().strip()
        if ref.startswith("ref: "):
            ref = (head / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return "unknown"
