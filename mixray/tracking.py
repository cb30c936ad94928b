"""The only module that talks to MLflow. It writes one experiment per sweep, a parent run per
invocation, a child run per trial, and one run per standalone evaluation (`python -m
mixray.evaluate`); and reads an invocation back (`load_sweep_record`) as the plain records of
`mixray.analysis`, which the report and the sweep's gap metrics use; for `--resume`, the trials
an invocation finished before as `Finished` records (`reopen_parent`). Uses explicit
`MlflowClient`s (no global active run), so trials running in other processes log safely to the
same store.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mixray import search  # search.Trial: a trial to run (analysis.Trial: one read back)
from mixray.analysis import SweepRecord, Trial, trial_accuracy
from mixray.artifacts import spec_key
from mixray.config import SweepConfig
from mixray.invocation import git_commit
from mixray.store import sqlite_path

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "mixray.trial"
ATTEMPTS_TAG = "mixray.attempts"  # how many times a trial started (node losses, --resume)
PARAMS_TAG = "mixray.params"  # the trial's search values as JSON (Optuna is told them on resume)
SUMMARY_METRICS = ("mix_rows", "mix_pools_ran_dry", "train_loss", "eval_accuracy",
                   "eval_accuracy_stderr", "eval_tokens_mean")
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


def reopen_parent(cfg: SweepConfig, parent_id: str) -> dict[str, Finished]:
    """For --resume: mark the parent running again, close children an interruption left
    RUNNING as KILLED, and return the finished trials by name."""
    c = client(cfg)
    c.update_run(parent_id, status="RUNNING")
    finished = {}
    for child in c.search_runs([c.get_run(parent_id).info.experiment_id],
                               f"tags.`{PARENT_TAG}` = '{parent_id}'"):
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
    stop interrupts the trial, which marks its run FAILED first: that is overwritten. A FINISHED
    run (it finished while the stop was on its way) is left as it is."""
    c = client(cfg)
    if c.get_run(run_id).info.status == "FINISHED":
        log.warning("trial run %s already finished; not marking it stopped early", run_id)
        return
    steps = _step_metrics(history)
    if steps:
        c.log_batch(run_id, metrics=steps)
    c.set_tag(run_id, "mixray.stopped_early", reason)
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
    c = client(cfg)
    c.set_tag(run_id, "mixray.error", error[:MAX_PARAM_CHARS])
    c.set_terminated(run_id, "FAILED")


# --------------------------------------------------------------------------- reading a sweep back


def open_client(tracking_uri: str) -> MlflowClient:
    """A client; refuses a sqlite URI whose file is missing (MLflow would create an empty one)."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise ValueError(f"no MLflow store at {path} (tracking URI {tracking_uri}); "
                         "run a sweep first or pass --tracking-uri")
    return MlflowClient(tracking_uri=tracking_uri)


def find_experiment_id(c: MlflowClient, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in c.search_experiments())
        raise ValueError(f"experiment {name!r} not found; experiments in this store: {names}")
    return exp.experiment_id


def _search_all(c: MlflowClient, exp_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = c.search_runs([exp_id], filter_string, max_results=1000,
                             order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_parent(c: MlflowClient, exp_id: str, experiment: str, parent_id: str | None) -> Run:
    """The given parent run, or the latest one of the experiment."""
    parents = _search_all(c, exp_id, "tags.`mixray.kind` = 'sweep'")
    if not parents:
        raise ValueError(f"experiment {experiment!r} has no sweep (parent) runs")
    if parent_id is None:
        return parents[0]
    for run in parents:
        if run.info.run_id == parent_id:
            return run
    known = [f"{r.info.run_id} ({r.info.run_name}, {_when(r.info.start_time)})" for r in parents]
    raise ValueError(f"parent run {parent_id!r} not found in experiment {experiment!r}; "
                     f"parent runs: {known}")


def _when(ms: int | None) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _teachers(params: dict[str, str], prefix: str) -> set[str]:
    pattern = re.compile(rf"^{re.escape(prefix)}teachers\.(.+)\.model$")
    return {m.group(1) for key in params if (m := pattern.match(key))}


def _curate(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        if key.startswith(CURATE_PREFIX):
            label, _, stat = key.removeprefix(CURATE_PREFIX).rpartition(".")
            out[label][stat] = value
    return dict(out)


def _benchmarks(metrics: dict[str, float]) -> dict[str, tuple[float, float | None]]:
    out = {}
    for key, value in metrics.items():
        if m := BENCH_RE.match(key):
            out[m.group(1)] = (value, metrics.get(f"{key}_stderr"))
    return dict(sorted(out.items()))


def _loss(c: MlflowClient, run: Run) -> tuple[float | None, tuple[tuple[int, float], ...]]:
    """The final train loss (logged at step 0) and the per-step curve (steps >= 1)."""
    if "train_loss" not in run.data.metrics:
        return None, ()
    history = c.get_metric_history(run.info.run_id, "train_loss")
    curve = tuple(sorted((m.step, m.value) for m in history if m.step >= 1))
    final = [m.value for m in history if m.step == 0]
    return (final[-1] if final else run.data.metrics["train_loss"]), curve


def _data_card(c: MlflowClient, run_id: str) -> dict[str, Any] | None:
    try:
        if not any(a.path == "data_card.json" for a in c.list_artifacts(run_id)):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(c.download_artifacts(run_id, "data_card.json", tmp))
                              .read_text())
    except (MlflowException, OSError, ValueError) as e:
        log.warning("could not read the data card of run %s: %s", run_id, e)
        return None


def _error_line(tags: dict[str, str]) -> str | None:
    lines = [ln.strip() for ln in tags.get("mixray.error", "").splitlines() if ln.strip()]
    return lines[-1] if lines else None


def load_trial(c: MlflowClient, run: Run, default_pools: tuple[str, str]) -> Trial:
    params, metrics = run.data.params, run.data.metrics
    benchmarks = _benchmarks(metrics)
    train_loss, curve = _loss(c, run)
    pools = (params.get("mix.long_pool", default_pools[0]),
             params.get("mix.short_pool", default_pools[1]))
    return Trial(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id,
        status=run.info.status, student=params.get("student", "?"),
        share=_float(params.get("long_share")), pools=pools, schedule=params.get("schedule"),
        accuracy=trial_accuracy(metrics, benchmarks), stderr=metrics.get("eval_accuracy_stderr"),
        train_loss=train_loss, loss_curve=curve, benchmarks=benchmarks,
        data_card=_data_card(c, run.info.run_id), error=_error_line(run.data.tags),
    )


def load_sweep_record(experiment: str, tracking_uri: str,
                      parent_id: str | None = None) -> SweepRecord:
    """Read the parent run (given, or the latest) of ``experiment`` and all its trials."""
    c = open_client(tracking_uri)
    exp_id = find_experiment_id(c, experiment)
    parent = find_parent(c, exp_id, experiment, parent_id)
    pid, params = parent.info.run_id, parent.data.params
    pools = (params.get("sweep.mix.long_pool", DEFAULT_POOLS[0]),
             params.get("sweep.mix.short_pool", DEFAULT_POOLS[1]))
    runs = _search_all(c, exp_id, f"tags.`{PARENT_TAG}` = '{pid}'")
    trials = sorted((load_trial(c, r, pools) for r in runs),
                    key=lambda t: (t.student, t.pools, t.share if t.share is not None else -1,
                                   t.schedule or "", t.name))
    teachers = _teachers(params, "sweep.").union(*(_teachers(r.data.params, "") for r in runs))
    log.info("report: experiment %r, parent %s, %d trials", experiment, pid, len(trials))
    return SweepRecord(
        experiment=experiment, tracking_uri=tracking_uri, parent_id=pid,
        parent_name=parent.info.run_name or pid, parent_status=parent.info.status,
        started=_when(parent.info.start_time), teachers=tuple(sorted(teachers)),
        curate=_curate(parent.data.metrics), trials=trials,
    )
