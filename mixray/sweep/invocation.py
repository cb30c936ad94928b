"""One run of a sweep (an invocation) and its state on disk, which `--resume` reads back.

Each invocation has a folder ``<run root>/sweeps/<name>/<id>/`` holding ``state.json`` (the
resume key, the MLflow parent run, the status) and, once it ends, ``summary.json``; its trials
write under ``<run root>/trials/<id>/<trial>/``, its baselines under
``<run root>/trials/<id>/_baselines/`` (every path from `mixray.runroot.RunRoot`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mixray.config import SweepConfig
from mixray.runroot import RunRoot


@dataclass
class Invocation:
    """One run of a sweep: its id, its MLflow parent and its status, kept in state.json so that
    `--resume` can find an interrupted run and continue it under the same parent."""

    root: RunRoot
    sweep: str
    id: str
    resume_key: str
    parent_run_id: str | None = None
    status: str = "running"  # running | finished | failed | interrupted

    @property
    def dir(self) -> Path:
        return self.root.invocation(self.sweep, self.id)

    @classmethod
    def new(cls, cfg: SweepConfig) -> Invocation:
        invocation_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        return cls(cfg.root, cfg.name, invocation_id, cfg.resume_key())

    @classmethod
    def latest_unfinished(cls, cfg: SweepConfig) -> Invocation:
        states = sorted(cfg.root.sweep(cfg.name).glob("*/state.json"))
        for path in reversed(states):
            state = json.loads(path.read_text())
            if state["status"] == "finished":
                continue
            if state["resume_key"] != cfg.resume_key():
                raise ValueError(
                    f"--resume: the interrupted run {path.parent.name} of sweep {cfg.name!r} "
                    "used a different configuration (only search and resources may change); "
                    "run without --resume to start a new sweep")
            return cls(cfg.root, cfg.name, path.parent.name, state["resume_key"],
                       state["parent_run_id"], state["status"])
        raise ValueError(f"--resume: sweep {cfg.name!r} has no interrupted run under "
                         f"{cfg.root.sweep(cfg.name)}")

    def save(self, status: str) -> None:
        self.status = status
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"resume_key": self.resume_key, "parent_run_id": self.parent_run_id,
                 "status": status}
        (self.dir / "state.json").write_text(json.dumps(state, indent=2))
