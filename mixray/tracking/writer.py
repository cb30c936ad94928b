"""What mixray writes to MLflow: one experiment per sweep, a parent run per invocation (with
each student's baseline evaluation), a child run per trial, and one run per standalone
evaluation (`python -m mixray.evaluate`); for `--resume`, the trials an invocation finished
before, read back as `Finished` records (`reopen_parent`).

Every call takes a `Target` (store and experiment) and plain values: run names, mappings of
params and metrics, files to log. It knows no sweep config and no stage, so the stages, the
sweep and the evaluate CLI all write through it. Explicit `MlflowClient`s (no global active
run) let trials in other processes log safely to the same store.
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

from mixray.artifacts import spec_key
from mixray.runroot import METRICS_FILE, SCORES_FILE
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


@dataclass(frozen=True)
class Target:
    """Where runs are written: an MLflow store and an experiment in it (a sweep's
    ``tracking_uri`` and ``experiment``). Constructing one touches nothing."""

    tracking_uri: str
    experiment: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)


def ensure_experiment(target: Target) -> str:
    """Create the experiment (with an explicit artifact location) before trials race to do it."""
    return _experiment(target.client(), target.experiment, target.tracking_uri)


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
    c.log_artifact(run_id, str(out_dir / METRICS_FILE))
    if (out_dir / SCORES_FILE).exists():  # what paired comparisons pair on
        c.log_artifact(run_id, str(out_dir / SCORES_FILE))
    if (out_dir / "bad_rows.jsonl").exists():
        c.log_artifact(run_id, str(out_dir / "bad_rows.jsonl"))
    table = json.loads((out_dir / "sample_completions.json").read_text())
    c.log_table(run_id, data={col: [row[i] for row in table["data"]]
                              for i, col in enumerate(table["columns"])},
                artifact_file="sample_completions.json")


def log_evaluation(target: Target, run_name: str, params: dict[str, Any],
                   metrics: dict[str, float], out_dir: Path) -> str:
    """One standalone evaluation as a FINISHED run (params, metrics, outputs); returns its id."""
    c = target.client()
    run = c.create_run(ensure_experiment(target), run_name=run_name,
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


def start_parent(target: Target, run_name: str, config: dict[str, Any],
                 upstream: dict[str, Any]) -> str:
    """A sweep invocation's run: ``config`` is the sweep (`SweepConfig.model_dump()`), logged
    as ``sweep.*`` params less its search, of which only what "best" means is kept (the rest
    is the trials'); ``upstream`` holds the teachers' curation stats and the stages."""
    c = target.client()
    run = c.create_run(ensure_experiment(target), run_name=run_name,
                       tags={"mixray.kind": "sweep"})
    params = flatten({"sweep": {k: v for k, v in config.items() if k != "search"}})
    params |= {"search.metric": config["search"]["metric"],
               "search.mode": config["search"]["mode"]}
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    c.log_batch(run.info.run_id, metrics=[
        Metric(f"curate.{label}.{k}", float(v), 0, 0)
        for label, s in upstream["curate"].items() for k, v in s.items()])
    _log_json(c, run.info.run_id, "config.json", config)
    _log_json(c, run.info.run_id, "upstream.json", upstream)
    return run.info.run_id


def log_baseline(target: Target, parent_id: str, student: str, metrics: dict[str, float],
                 eval_dir: Path) -> None:
    """A student evaluated before fine-tuning, on the parent run: ``baseline/<name>/<metric>``
    metrics and, under ``baselines/<name>/``, its metrics.json, scores.json and baseline.json
    (which names the student's spec: the report reads the baselines back from it)."""
    c, name = target.client(), Path(student).name
    keep = ("eval_accuracy", "eval_accuracy_stderr", "eval_n", "eval_tokens_mean")
    c.log_batch(parent_id, metrics=[Metric(f"baseline/{name}/{k}", float(metrics[k]), 0, 0)
                                    for k in keep if k in metrics])
    folder = f"baselines/{name}"
    for file in (METRICS_FILE, SCORES_FILE):
        c.log_artifact(parent_id, str(eval_dir / file), folder)
    _log_json(c, parent_id, "baseline.json", {
        "student": student, "accuracy": metrics["eval_accuracy"],
        "stderr": metrics.get("eval_accuracy_stderr")}, folder)


def tag_parent(target: Target, parent_id: str, key: str, value: str) -> None:
    target.client().set_tag(parent_id, key, value[:MAX_PARAM_CHARS])


def end_parent(target: Target, run_id: str, status: str) -> None:
    """KILLED: the sweep was interrupted, and the trials it stopped with it, which do not
    record a stop as their failure (tune.run_trial), are closed KILLED too."""
    assert status in ("FINISHED", "FAILED", "KILLED"), status
    c = target.client()
    if status == "KILLED":
        for child in _children(c, run_id):
            if child.info.status == "RUNNING":
                c.set_terminated(child.info.run_id, "KILLED")
    c.set_terminated(run_id, status)


def _children(c: MlflowClient, parent_id: str) -> list[Run]:
    return c.search_runs([c.get_run(parent_id).info.experiment_id],
                         f"tags.`{PARENT_TAG}` = '{parent_id}'")


def reopen_parent(target: Target, parent_id: str, metric: str) -> dict[str, Finished]:
    """For --resume: mark the parent running again, close children an interruption left
    RUNNING as KILLED, and return the finished trials by name (with SUMMARY_METRICS and the
    search's ``metric``)."""
    c = target.client()
    c.update_run(parent_id, status="RUNNING")
    finished = {}
    for child in _children(c, parent_id):
        tags = child.data.tags
        if child.info.status == "FINISHED":
            metrics = child.data.metrics
            finished[tags[TRIAL_TAG]] = Finished(
                student=child.data.params["student"],
                params=json.loads(tags.get(PARAMS_TAG, "{}")),
                metrics={k: metrics.get(k) for k in (*SUMMARY_METRICS, metric)})
        elif child.info.status == "RUNNING":
            c.set_terminated(child.info.run_id, "KILLED")
    return finished


def _step_metrics(history: list[dict]) -> list[Metric]:
    return [Metric(k, float(v), 0, int(h["step"])) for h in history for k, v in h.items()
            if k != "step"]


def log_upstream_inputs(target: Target, parent_id: str, problems: Path,
                        pools: dict[str, Path]) -> None:
    """The sweep's problems (train, eval) and each teacher's pool as the parent's dataset
    inputs, each digested by the key of the stage that wrote it."""
    from mixray.tracking.datasets import dataset_input, log_datasets

    inputs = [dataset_input(f"problems/{split}", problems / f"{split}.parquet", problems.name,
                            f"{split} problems") for split in ("train", "eval")]
    inputs += [dataset_input(f"pool/{label}", path, path.parent.name, "teacher pool")
               for label, path in pools.items()]
    log_datasets(target.client(), parent_id, inputs)


def log_mix_input(target: Target, run_id: str, manifest: Path, content_hash: str) -> None:
    """A trial's mix manifest as its training dataset (digest: the manifest's content hash)."""
    from mixray.tracking.datasets import dataset_input, log_datasets

    log_datasets(target.client(), run_id,
                 [dataset_input("mix", manifest, content_hash, "training")])


@contextmanager
def system_metrics(target: Target, run_id: str) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU where there is one) of the node
    a trial runs on, every SYSTEM_METRICS_S, as ``system/<node>/...`` of its run. A trial run
    again (a lost node, --resume) continues the steps where its last attempt left them."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_S,
                                   node_id=socket.gethostname(), resume_logging=True,
                                   tracking_uri=target.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def start_child(target: Target, parent_id: str, name: str, search: dict[str, Any],
                params: dict[str, Any], config: dict[str, Any]) -> str:
    """A trial's run: ``search`` are its search values (tagged: Optuna is told them again on
    resume), ``params`` what it logs as params (nested mappings flattened; ``student`` among
    them), ``config`` its own sweep (`SweepConfig.for_trial(...).model_dump()`). A trial run
    again under the same parent (Tune retrying it after its node was lost, --resume after a
    failure) continues its own child run: one run per trial, whatever the attempts."""
    c = target.client()
    if (again := find_child(target, parent_id, name)) is not None:
        attempt = int(c.get_run(again).data.tags.get(ATTEMPTS_TAG, "1")) + 1
        log.info("trial %s: attempt %d continues MLflow run %s", name, attempt, again)
        c.set_tag(again, ATTEMPTS_TAG, str(attempt))
        c.update_run(again, status="RUNNING")
        return again
    tags = {PARENT_TAG: parent_id, "mixray.kind": "trial", TRIAL_TAG: name,
            PARAMS_TAG: json.dumps(search, default=str),
            "mixray.config_hash": spec_key(config), "mixray.git_commit": git_commit()}
    run = c.create_run(ensure_experiment(target), run_name=name, tags=tags)
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flatten(params).items()])
    _log_json(c, run.info.run_id, "config.json", config)
    return run.info.run_id


def find_child(target: Target, parent_id: str, name: str) -> str | None:
    c = target.client()
    runs = c.search_runs([ensure_experiment(target)],
                         f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{name}'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def stop_child(target: Target, run_id: str, history: list[dict], reason: str) -> None:
    """A trial the scheduler stopped early: its per-step metrics so far, KILLED, and why. The
    stop interrupts the trial, which may mark its run FAILED first: that is overwritten, and a
    failure it reports later is not written (fail_child). A FINISHED run (it finished while the
    stop was on its way) is left as it is."""
    c = target.client()
    if c.get_run(run_id).info.status == "FINISHED":
        log.warning("trial run %s already finished; not marking it stopped early", run_id)
        return
    steps = _step_metrics(history)
    if steps:
        c.log_batch(run_id, metrics=steps)
    c.set_tag(run_id, STOPPED_TAG, reason)  # before the status: fail_child reads it
    c.set_terminated(run_id, "KILLED")


def log_decontamination(target: Target, parent_id: str, problems: dict[str, Any]) -> None:
    """How many training problems were set aside for overlapping each benchmark (the problems'
    summary, `mixray.problems.decontaminate`), on the parent run; nothing when it was off."""
    found = problems.get("decontamination")
    if found:
        metrics = {f"decontamination/dropped/{name}": n for name, n in found["dropped"].items()}
        metrics["decontamination/dropped_total"] = found["dropped_total"]
        target.client().log_batch(parent_id, metrics=[Metric(k, float(v), 0, 0)
                                                      for k, v in metrics.items()])


def log_gaps(target: Target, parent_id: str, gaps: dict[str, float]) -> None:
    """The learnability gaps and best-mix margins across trials, on the parent run."""
    if gaps:
        target.client().log_batch(parent_id, metrics=[Metric(k, float(v), 0, 0)
                                                  for k, v in gaps.items()])


def finish_child(target: Target, run_id: str, history: list[dict], metrics: dict[str, float],
                 data_card: dict, eval_dir: Path) -> None:
    c = target.client()
    log_eval_outputs(c, run_id, eval_dir)
    steps = _step_metrics(history)
    # Final metrics sit at the last step, so curves end where training ended (not at step 0).
    last = int(history[-1]["step"])
    final = [Metric(k, float(v), 0, last) for k, v in metrics.items() if k not in history[-1]]
    c.log_batch(run_id, metrics=steps + final)
    c.set_tag(run_id, "mixray.manifest_hash", data_card["content_hash"])
    _log_json(c, run_id, "data_card.json", data_card)
    c.set_terminated(run_id, "FINISHED")


def fail_child(target: Target, run_id: str, error: str) -> None:
    """A trial's own failure. Not over a stop: a stopped trial's actor is ended after the sweep's
    driver may already have closed its run as KILLED (stop_child), and the error that ending
    raises in the trial is not the trial's (a CI run once showed ASHA's cut as FAILED)."""
    c = target.client()
    if STOPPED_TAG in c.get_run(run_id).data.tags:
        log.info("trial run %s was stopped early; its late error is not recorded", run_id)
        return
    c.set_tag(run_id, "mixray.error", error[:MAX_PARAM_CHARS])
    c.set_terminated(run_id, "FAILED")


def git_commit() -> str:
    """The commit of the checkout the sweep runs from ('unknown' outside git, e.g. a Ray job's
    uploaded working dir, which carries no .git)."""
    head = Path(__file__).resolve().parents[2] / ".git"
    try:
        ref = (head / "HEAD").read_text().strip()
        if ref.startswith("ref: "):
            ref = (head / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return "unknown"
