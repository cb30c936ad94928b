"""The run root's layout: every folder a sweep writes under its run root, named once.

A run root holds what one machine or a whole cluster shares (the sweep's ``run_root``, storage
every node sees). Its writers (the stages, the trials, Ray Train and Tune, the invocation's
state) and its readers (the cost comparison, the summary, `--resume`, the tests) ask `RunRoot`
for a path instead of joining folder names by hand::

    <run root>/
      artifacts/<stage>/<key>/         keyed stage outputs (mixray.artifacts.StageDir)
      models/                          models placed for every node (mixray.models)
      mlflow.db, mlartifacts/          the default MLflow store (mixray.store)
      sweeps/<sweep>/<invocation>/     state.json, summary.json (mixray.sweep.invocation)
      trials/<invocation>/<trial>/     a trial's mix and eval/ (its evaluation)
      trials/<invocation>/_baselines/  the students evaluated before fine-tuning
      train/<invocation>-<trial>/      a trial's Ray Train run: checkpoints, the student
      tune/                            Ray Tune's experiment state
      logs/<sweep>-<time>.log          the console's redirected output
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METRICS_FILE = "metrics.json"  # an evaluation's metrics (mixray.evaluate.stage)
SCORES_FILE = "scores.json"  # an evaluation's per-problem scores (science.significance.Scores)
BASELINES = "_baselines"  # the trial folder name of an invocation's baseline evaluations


@dataclass(frozen=True)
class RunRoot:
    """The folders under one run root. Constructing one touches no disk; the path is used as
    given (relative paths stay relative: `store.default_tracking_uri` relies on it)."""

    path: Path

    def artifact(self, stage: str, key: str) -> Path:
        return self.path / "artifacts" / stage / key

    @property
    def models(self) -> Path:
        return self.path / "models"

    @property
    def mlflow_db(self) -> Path:
        return self.path / "mlflow.db"

    def sweep(self, name: str) -> Path:
        """Every invocation of one sweep (``--resume`` looks for the latest unfinished)."""
        return self.path / "sweeps" / name

    def invocation(self, sweep: str, invocation: str) -> Path:
        return self.sweep(sweep) / invocation

    def trial(self, invocation: str, trial: str) -> Path:
        """Where a trial writes its mix and evaluation: the same on --resume (same invocation)."""
        return self.path / "trials" / invocation / trial

    def trial_eval(self, invocation: str, trial: str) -> Path:
        return self.trial(invocation, trial) / "eval"

    def baselines(self, invocation: str) -> Path:
        return self.trial(invocation, BASELINES)

    @property
    def train(self) -> Path:
        """Ray Train's storage: one run folder per trial (`train_run`)."""
        return self.path / "train"

    def train_run(self, invocation: str, trial: str) -> Path:
        """A trial's Ray Train run: the same on --resume, so a failed trial resumes from its
        checkpoints."""
        return self.train / f"{invocation}-{trial}"

    @property
    def tune(self) -> Path:
        return self.path / "tune"

    def log(self, sweep: str, stamp: str) -> Path:
        return self.path / "logs" / f"{sweep}-{stamp}.log"
