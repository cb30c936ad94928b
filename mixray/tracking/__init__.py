"""The only package that talks to MLflow. This module writes one experiment per sweep, a parent
run per invocation (with each student's baseline evaluation), a child run per trial, and one run
per standalone evaluation (`python -m mixray.evaluate`); for `--resume`, it reads the trials an
invocation finished before as `Finished` records (`reopen_parent`). `mixray.tracking.records`
reads a whole invocation back for the report. Uses explicit `MlflowClient`s (no global active
run), so trials running in other processes log safely to the same store.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run
from mlflow.tracking import MlflowClient

from mixray import search  # search.Trial: a trial to run (analysis.Trial: one read back)
from mixray.artifacts import spec_key
from mixray.config import SweepConfig
from mixray.evaluate.stage import SCORES_FILE
from mixray.invocation import git_commit
from mixray.store import sqlite_path

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "mixray.trial"
ATTEMPTS_TAG = "mixray.attempts"  # how many times a trial started (node losses, --resume)
PARAMS_TAG = "mixray.params"  # the trial's search values as JSON (Optuna is told them on resume)
STOPPED_TAG = "mixray.stopped_early"  # why the scheduler stopped a trial (ASHA's rung and step)
SUMMARY_METRICS = ("mix_rows", "mix_pools_ran_dry", "train_loss", "eval_accuracy",
                   "eval_accuracy_stderr", "eval_tokens_mean")
SYSTEM_METRICS_S = 5  # a smoke trial lasts ~30 s: a few samples; a GPU trial, thousands
MAX_PARAM_CHARS = 500  # MLflow's limit is 6000; long values are shortened, not refused
DEFAULT_POOLS = ("long", "short")  # mix.long_pool / mix.short_pool when a run did not log them
BENCH_RE = re.compile(r"^eval\.(.+)\.accuracy$")
CURATE_PREFIX = "curate."


@dataclass(frozen=True)
class Finished:
    """A trial an interrupted invocation finished, read back for --resume (its name is the key of
    `reopen_parent`'s mapping)."""

    student: str
    params: dict[str, Any]  # its search values (Optuna is told them again)
    metrics: dict[str, float | None]  # SUMMARY_METRICS and the search metric; None: not logged


def client(cfg: SweepConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking_uri)


def ensure_experiment(cfg: SweepConfig) -> str:
    """Create the experiment (with an explicit artifact location) before trials race to do it."""
    return _experiment(client(cfg), cfg.experiment, cfg.tracking_uri)


def _experiment(c: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment's id, created if new. Beside a local sqlite store its artifacts go next to
    it (``runs/mlflow.db`` -> ``runs/mlartifacts``); a tracking server keeps its own default."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = sqlite_path(tracking_uri)
    location = None if db is None else (db.parent / "mlartifacts").resolve().as_uri()
    return c.create_experiment(name, artifact_location=location)


def log_eval_outputs(c: MlflowClient, run_id: str, out_dir: Path) -> None:
    """What the evaluation stage wrote (mixray/evaluate/stage.py): metrics.json, the rows set
    aside, and the sample completions as a table (the MLflow UI shows it in the run's view)."""
    c.log_artifact(run_id, str(out_dir / "metrics.json"))
    if (out_dir / SCORES_FILE).exists():  # what paired comparisons pair on
        c.log_artifact(run_id, str(out_dir / SCORES_FILE))
    if (out_dir / "bad_rows.jsonl").exists():
        c.log_artifact(run_id, str(out_dir / "bad_rows.jsonl"))
    table = json.loads((out_dir / "sample_completions.json").read_text())
    c.log_table(run_id, data={col: [row[i] for row in table["data"]]
                              for i, col in enumerate(table["columns"])},
                artifact_file="sample_completions.json")


def log_evaluation(tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any],
                   metrics: dict[str, float], out_dir: Path) -> str:
    """One standalone evaluation as a FINISHED run (params, metrics, outputs); returns its id."""
    c = MlflowClient(tracking_uri=tracking_uri)
    run = c.create_run(_experiment(c, experiment, tracking_uri), run_name=run_name,
                       tags={"mixray.kind": "evaluation", "mixray.git_commit": git_commit()})
    try:
        c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flatten(params).items()],
                    metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])
        log_eval_outputs(c, run.info.run_id, out_dir)
    except BaseException:
        c.set_terminated(run.info.run_id, "FAILED")
        raise
    c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


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


def _log_json(c: MlflowClient, run_id: str, name: str, obj: Any,
              folder: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(obj, indent=2, default=str))
        c.log_artifact(run_id, str(path), folder)


def start_parent(cfg: SweepConfig, upstream: dict[str, Any]) -> str:
    c = client(cfg)
    run = c.create_run(ensure_experiment(cfg), run_name=f"{cfg.name}-sweep",
                       tags={"mixray.kind": "sweep"})
    params = flatten({"sweep": cfg.model_dump(exclude={"search"})})
    # what "best" means, for the report (the rest of search is the trials')
    params |= {"search.metric": cfg.search.metric, "search.mode": cfg.search.mode}
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    c.log_batch(run.info.run_id, metrics=[
        Metric(f"curate.{label}.{k}", float(v), 0, 0)
        for label, s in upstream["curate"].items() for k, v in s.items()])
    _log_json(c, run.info.run_id, "config.json", cfg.model_dump())
    _log_json(c, run.info.run_id, "upstream.json", upstream)
    return run.info.run_id


def log_baseline(cfg: SweepConfig, parent_id: str, student: str, metrics: dict[str, float],
                 eval_dir: Path) -> None:
    """A student evaluated before fine-tuning, on the parent run: ``baseline/<name>/<metric>``
    metrics and, under ``baselines/<name>/``, its metrics.json, scores.json and baseline.json
    (which names the student's spec: the report reads the baselines back from it)."""
    c, name = client(cfg), Path(student).name
    keep = ("eval_accuracy", "eval_accuracy_stderr", "eval_n", "eval_tokens_mean")
    c.log_batch(parent_id, metrics=[Metric(f"baseline/{name}/{k}", float(metrics[k]), 0, 0)
                                    for k in keep if k in metrics])
    folder = f"baselines/{name}"
    for file in ("metrics.json", SCORES_FILE):
        c.log_artifact(parent_id, str(eval_dir / file), folder)
    _log_json(c, parent_id, "baseline.json", {
        "student": student, "accuracy": metrics["eval_accuracy"],
        "stderr": metrics.get("eval_accuracy_stderr")}, folder)


def tag_parent(cfg: SweepConfig, parent_id: str, key: str, value: str) -> None:
    client(cfg).set_tag(parent_id, key, value[:MAX_PARAM_CHARS])


def end_parent(cfg: SweepConfig, run_id: str, status: str) -> None:
    """KILLED: the sweep was interrupted, and the trials it stopped with it, which do not
    record a stop as their failure (tune.run_trial), are closed KILLED too."""
    assert status in ("FINISHED", "FAILED", "KILLED"), status
    c = client(cfg)
    if status == "KILLED":
        for child in _children(c, run_id):
            if child.info.status == "RUNNING":
                c.set_terminated(child.info.run_id, "KILLED")
    c.set_terminated(run_id, status)


def _children(c: MlflowClient, parent_id: str) -> list[Run]:
    return c.search_runs([c.get_run(parent_id).info.experiment_id],
                         f"tags.`{PARENT_TAG}` = '{parent_id}'")


def reopen_parent(cfg: SweepConfig, parent_id: str) -> dict[str, Finished]:
    """For --resume: mark the parent running again, close children an interruption left
    RUNNING as KILLED, and return the finished trials by name."""
    c = client(cfg)
    c.update_run(parent_id, status="RUNNING")
    finished = {}
    for child in _children(c, parent_id):
        tags = child.data.tags
        if child.info.status == "FINISHED":
            metrics = child.data.metrics
            finished[tags[TRIAL_TAG]] = Finished(
                student=child.data.params["student"],
                params=json.loads(tags.get(PARAMS_TAG, "{}")),
                metrics={k: metrics.get(k) for k in (*SUMMARY_METRICS, cfg.search.metric)})
        elif child.info.status == "RUNNING":
            c.set_terminated(child.info.run_id, "KILLED")
    return finished


def _step_metrics(history: list[dict]) -> list[Metric]:
    return [Metric(k, float(v), 0, int(h["step"])) for h in history for k, v in h.items()
            if k != "step"]


def log_upstream_inputs(cfg: SweepConfig, parent_id: str, problems: Path,
                        pools: dict[str, Path]) -> None:
    """The sweep's problems (train, eval) and each teacher's pool as the parent's dataset
    inputs, each digested by the key of the stage that wrote it."""
    from mixray.tracking.datasets import dataset_input, log_datasets

    inputs = [dataset_input(f"problems/{split}", problems / f"{split}.parquet", problems.name,
                            f"{split} problems") for split in ("train", "eval")]
    inputs += [dataset_input(f"pool/{label}", path, path.parent.name, "teacher pool")
               for label, path in pools.items()]
    log_datasets(client(cfg), parent_id, inputs)


def log_mix_input(cfg: SweepConfig, run_id: str, manifest: Path, content_hash: str) -> None:
    """A trial's mix manifest as its training dataset (digest: the manifest's content hash)."""
    from mixray.tracking.datasets import dataset_input, log_datasets

    log_datasets(client(cfg), run_id, [dataset_input("mix", manifest, content_hash, "training")])


@contextmanager
def system_metrics(cfg: SweepConfig, run_id: str) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU where there is one) of the node
    a trial runs on, every SYSTEM_METRICS_S, as ``system/<node>/...`` of its run. A trial run
    again (a lost node, --resume) continues the steps where its last attempt left them."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_S,
                                   node_id=socket.gethostname(), resume_logging=True,
                                   tracking_uri=cfg.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def start_child(cfg: SweepConfig, parent_id: str, trial: search.Trial) -> str:
    """`cfg` is the trial's own config (SweepConfig.for_trial). A trial run again under the
    same parent (Tune retrying it after its node was lost, --resume after a failure) continues
    its own child run: one run per trial, whatever the attempts."""
    c = client(cfg)
    if (again := find_child(cfg, parent_id, trial.name)) is not None:
        attempt = int(c.get_run(again).data.tags.get(ATTEMPTS_TAG, "1")) + 1
        log.info("trial %s: attempt %d continues MLflow run %s", trial.name, attempt, again)
        c.set_tag(again, ATTEMPTS_TAG, str(attempt))
        c.update_run(again, status="RUNNING")
        return again
    tags = {PARENT_TAG: parent_id, "mixray.kind": "trial", TRIAL_TAG: trial.name,
            PARAMS_TAG: json.dumps(trial.params, default=str),
            "mixray.config_hash": spec_key(cfg.model_dump()), "mixray.git_commit": git_commit()}
    run = c.create_run(ensure_experiment(cfg), run_name=trial.name, tags=tags)
    params = {"student": trial.student, "long_share": cfg.mix.long_share,
              "schedule": schedule_label(cfg),
              "search": trial.params,
              "teachers": {k: {"model": t.model, "style": t.style,
                               "system_prompt": t.system_turn} for k, t in cfg.teachers.items()},
              "mix": cfg.mix.model_dump(), "train": cfg.train.model_dump(),
              "evaluate": cfg.evaluate.model_dump()}
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flatten(params).items()])
    _log_json(c, run.info.run_id, "config.json", cfg.model_dump())
    return run.info.run_id


def schedule_label(cfg: SweepConfig) -> str:
    """How the report groups trials by schedule: the kind, plus a short hash of its settings."""
    s = cfg.mix.schedule
    return s.kind if s.kind == "constant" else f"{s.kind}-{spec_key(s.model_dump())[:6]}"


def find_child(cfg: SweepConfig, parent_id: str, name: str) -> str | None:
    c = client(cfg)
    runs = c.search_runs([ensure_experiment(cfg)],
                         f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{name}'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def stop_child(cfg: SweepConfig, run_id: str, history: list[dict], reason: str) -> None:
    """A trial the scheduler stopped early: its per-step metrics so far, KILLED, and why. The
    stop interrupts the trial, which may mark its run FAILED first: that is overwritten, and a
    failure it reports later is not written (fail_child). A FINISHED run (it finished while the
    stop was on its way) is left as it is."""
    c = client(cfg)
    if c.get_run(run_id).info.status == "FINISHED":
        log.warning("trial run %s already finished; not marking it stopped early", run_id)
        return
    steps = _step_metrics(history)
    if steps:
        c.log_batch(run_id, metrics=steps)
    c.set_tag(run_id, STOPPED_TAG, reason)  # before the status: fail_child reads it
    c.set_terminated(run_id, "KILLED")


def log_gaps(cfg: SweepConfig, parent_id: str, gaps: dict[str, float]) -> None:
    """The learnability gaps and best-mix margins across trials, on the parent run."""
    if gaps:
        client(cfg).log_batch(parent_id, metrics=[Metric(k, float(v), 0, 0)
                                                  for k, v in gaps.items()])


def finish_child(cfg: SweepConfig, run_id: str, history: list[dict], metrics: dict[str, float],
                 data_card: dict, eval_dir: Path) -> None:
    c = client(cfg)
    log_eval_outputs(c, run_id, eval_dir)
    steps = _step_metrics(history)
    # Final metrics sit at the last step, so curves end where training ended (not at step 0).
    last = int(history[-1]["step"])
    final = [Metric(k, float(v), 0, last) for k, v in metrics.items() if k not in history[-1]]
    c.log_batch(run_id, metrics=steps + final)
    c.set_tag(run_id, "mixray.manifest_hash", data_card["content_hash"])
    _log_json(c, run_id, "data_card.json", data_card)
    c.set_terminated(run_id, "FINISHED")


def fail_child(cfg: SweepConfig, run_id: str, error: str) -> None:
    """A trial's own failure. Not over a stop: a stopped trial's actor is ended after the sweep's
    driver may already have closed its run as KILLED (stop_child), and the error that ending
    raises in the trial is not the trial's (a CI run once showed ASHA's cut as FAILED)."""
    c = client(cfg)
    if STOPPED_TAG in c.get_run(run_id).data.tags:
        log.info("trial run %s was stopped early; its late error is not recorded", run_id)
        return
    c.set_tag(run_id, "mixray.error", error[:MAX_PARAM_CHARS])
    c.set_terminated(run_id, "FAILED")
