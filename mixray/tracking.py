"""The only module that writes to MLflow (report.py reads it): one experiment per sweep, a
parent run per invocation, a child run per trial. Uses explicit `MlflowClient`s (no global
active run), so trials running in other processes log safely to the same store.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mixray.config import SweepConfig, trial_name

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "mixray.trial"
SUMMARY_METRICS = ("mix_rows", "train_loss", "eval_accuracy", "eval_accuracy_stderr",
                   "eval_tokens_mean")
MAX_PARAM_CHARS = 500  # MLflow's limit is 6000; long values are shortened, not refused


def client(cfg: SweepConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking_uri)


def ensure_experiment(cfg: SweepConfig) -> str:
    """Create the experiment (with an explicit artifact location) before trials race to do it."""
    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = (cfg.run_root_path / "mlartifacts").as_uri() if cfg.tracking.tracking_uri is None \
        else None
    return c.create_experiment(cfg.experiment, artifact_location=location)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            text = json.dumps(v, default=str) if not isinstance(v, str) else v
            out[key] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


def _log_json(c: MlflowClient, run_id: str, name: str, obj: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(obj, indent=2, default=str))
        c.log_artifact(run_id, str(path))


def start_parent(cfg: SweepConfig, upstream: dict[str, Any]) -> str:
    c = client(cfg)
    run = c.create_run(ensure_experiment(cfg), run_name=f"{cfg.name}-sweep",
                       tags={"mixray.kind": "sweep"})
    params = flatten({"sweep": cfg.model_dump(exclude={"search"})})
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    c.log_batch(run.info.run_id, metrics=[
        Metric(f"curate.{label}.{k}", float(v), 0, 0)
        for label, s in upstream["curate"].items() for k, v in s.items()])
    _log_json(c, run.info.run_id, "config.json", cfg.model_dump())
    _log_json(c, run.info.run_id, "upstream.json", upstream)
    return run.info.run_id


def end_parent(cfg: SweepConfig, run_id: str, status: str) -> None:
    assert status in ("FINISHED", "FAILED", "KILLED"), status
    client(cfg).set_terminated(run_id, status)


def reopen_parent(cfg: SweepConfig, parent_id: str) -> dict[str, dict[str, float]]:
    """For --resume: mark the parent running again, close children an interruption left
    RUNNING as KILLED, and return the finished trials: name -> summary metrics."""
    c = client(cfg)
    c.update_run(parent_id, status="RUNNING")
    finished = {}
    for child in c.search_runs([c.get_run(parent_id).info.experiment_id],
                               f"tags.`{PARENT_TAG}` = '{parent_id}'"):
        if child.info.status == "FINISHED":
            finished[child.data.tags[TRIAL_TAG]] = {
                k: child.data.metrics.get(k) for k in SUMMARY_METRICS}
        elif child.info.status == "RUNNING":
            c.set_terminated(child.info.run_id, "KILLED")
    return finished


def start_child(cfg: SweepConfig, parent_id: str, trial: dict[str, Any]) -> str:
    c = client(cfg)
    name = trial_name(trial)
    run = c.create_run(ensure_experiment(cfg), run_name=name,
                       tags={PARENT_TAG: parent_id, "mixray.kind": "trial", TRIAL_TAG: name})
    params = {"student": trial["student"], "long_share": trial["long_share"],
              "teachers": {k: {"model": t.model, "style": t.style} for k, t in cfg.teachers.items()},
              "train": cfg.train.model_dump()}
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flatten(params).items()])
    return run.info.run_id


def finish_child(cfg: SweepConfig, run_id: str, history: list[dict], metrics: dict[str, float],
                 data_card: dict) -> None:
    c = client(cfg)
    steps = [Metric(k, float(v), 0, int(h["step"])) for h in history for k, v in h.items()
             if k != "step"]
    # Final metrics sit at the last step, so curves end where training ended (not at step 0).
    last = int(history[-1]["step"])
    final = [Metric(k, float(v), 0, last) for k, v in metrics.items() if k not in history[-1]]
    c.log_batch(run_id, metrics=steps + final)
    c.set_tag(run_id, "mixray.manifest_hash", data_card["content_hash"])
    _log_json(c, run_id, "data_card.json", data_card)
    c.set_terminated(run_id, "FINISHED")


def fail_child(cfg: SweepConfig, run_id: str, error: str) -> None:
    c = client(cfg)
    c.set_tag(run_id, "mixray.error", error[:MAX_PARAM_CHARS])
    c.set_terminated(run_id, "FAILED")
