"""A sweep invocation read back from MLflow: its parent run and trials as the plain records of
`mixray.science.analysis` (`load_sweep_record`), which the report and `python -m mixray.propose`
use.
It reads the layout `mixray.tracking` writes (tags, params, artifacts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mixray.runroot import SCORES_FILE
from mixray.science.analysis import Baseline, SweepRecord, Trial, trial_accuracy
from mixray.science.config import AnalysisConfig
from mixray.science.significance import Scores
from mixray.search import SEED, point_label
from mixray.store import default_tracking_uri, sqlite_path
from mixray.tracking.writer import BENCH_RE, CURATE_PREFIX, DEFAULT_POOLS, PARAMS_TAG, PARENT_TAG

log = logging.getLogger(__name__)

def add_invocation_arguments(parser: argparse.ArgumentParser) -> None:
    """--experiment, --tracking-uri, --parent: how the report and the proposer name the sweep
    invocation they read."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the sweep name).")
    parser.add_argument("--tracking-uri", default=default_tracking_uri(),
                        help="MLflow tracking URI (default: %(default)s).")
    parser.add_argument("--parent", default=None,
                        help="Parent run id of the invocation (default: the latest one).")
    # one progress bar per downloaded artifact otherwise (data cards, scores)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


def _json_artifact(c: MlflowClient, run_id: str, path: str) -> Any | None:
    """A JSON artifact of a run; None when it has none (a run from before it was logged)."""
    folder = path.rpartition("/")[0] or None
    try:
        if not any(a.path == path for a in c.list_artifacts(run_id, folder)):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(c.download_artifacts(run_id, path, tmp)).read_text())
    except (MlflowException, OSError, ValueError) as e:
        log.warning("could not read %s of run %s: %s", path, run_id, e)
        return None


def parent_config(tracking_uri: str, parent_id: str) -> dict[str, Any]:
    """The sweep a parent run ran (its config.json artifact: `SweepConfig.model_dump()`)."""
    config = _json_artifact(open_client(tracking_uri), parent_id, "config.json")
    if config is None:
        raise ValueError(f"parent run {parent_id} has no config.json artifact to start from")
    return config


def _scores(c: MlflowClient, run_id: str, path: str = SCORES_FILE) -> Scores | None:
    data = _json_artifact(c, run_id, path)
    try:
        return None if data is None else Scores.from_json(data)
    except ValueError as e:
        log.warning("run %s: %s is not per-problem scores (%s); its comparisons are left out",
                    run_id, path, e)
        return None


def _error_line(tags: dict[str, str]) -> str | None:
    lines = [ln.strip() for ln in tags.get("mixray.error", "").splitlines() if ln.strip()]
    return lines[-1] if lines else None


def load_trial(c: MlflowClient, run: Run, default_pools: tuple[str, str],
               metric: str = "eval_accuracy") -> Trial:
    params, metrics = run.data.params, run.data.metrics
    benchmarks = _benchmarks(metrics)
    train_loss, curve = _loss(c, run)
    pools = (params.get("mix.long_pool", default_pools[0]),
             params.get("mix.short_pool", default_pools[1]))
    values = json.loads(run.data.tags.get(PARAMS_TAG, "{}"))
    return Trial(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id,
        status=run.info.status, student=params.get("student", "?"),
        share=_float(params.get("long_share")), pools=pools, schedule=params.get("schedule"),
        accuracy=trial_accuracy(metrics, benchmarks), stderr=metrics.get("eval_accuracy_stderr"),
        train_loss=train_loss, loss_curve=curve, benchmarks=benchmarks,
        data_card=_json_artifact(c, run.info.run_id, "data_card.json"),
        error=_error_line(run.data.tags), seed=values.get(SEED), point=point_label(values),
        value=metrics.get(metric), scores=_scores(c, run.info.run_id),
        params=values, metrics=dict(metrics),
    )


def _baselines(c: MlflowClient, parent: Run) -> dict[str, Baseline]:
    """The students' baseline evaluations logged on the parent (tracking.log_baseline)."""
    pid, out = parent.info.run_id, {}
    for folder in c.list_artifacts(pid, "baselines"):
        info = _json_artifact(c, pid, f"{folder.path}/baseline.json")
        if info is not None:
            out[info["student"]] = Baseline(info["student"], info["accuracy"], info["stderr"],
                                            _scores(c, pid, f"{folder.path}/{SCORES_FILE}"))
    return out


def _analysis(params: dict[str, str]) -> AnalysisConfig:
    """The parent's `analysis` section (sweep.analysis.*); defaults for runs from before it."""
    prefix = "sweep.analysis."
    given = {k.removeprefix(prefix): json.loads(v) for k, v in params.items()
             if k.startswith(prefix)}
    return AnalysisConfig.model_validate(given)


def load_sweep_record(experiment: str, tracking_uri: str,
                      parent_id: str | None = None) -> SweepRecord:
    """Read the parent run (given, or the latest) of ``experiment`` and all its trials."""
    c = open_client(tracking_uri)
    exp_id = find_experiment_id(c, experiment)
    parent = find_parent(c, exp_id, experiment, parent_id)
    pid, params = parent.info.run_id, parent.data.params
    pools = (params.get("sweep.mix.long_pool", DEFAULT_POOLS[0]),
             params.get("sweep.mix.short_pool", DEFAULT_POOLS[1]))
    metric = params.get("search.metric", "eval_accuracy")
    runs = _search_all(c, exp_id, f"tags.`{PARENT_TAG}` = '{pid}'")
    trials = sorted((load_trial(c, r, pools, metric) for r in runs),
                    key=lambda t: (t.student, t.pools, t.share if t.share is not None else -1,
                                   t.schedule or "", t.name))
    teachers = _teachers(params, "sweep.").union(*(_teachers(r.data.params, "") for r in runs))
    log.info("report: experiment %r, parent %s, %d trials", experiment, pid, len(trials))
    return SweepRecord(
        experiment=experiment, tracking_uri=tracking_uri, parent_id=pid,
        parent_name=parent.info.run_name or pid, parent_status=parent.info.status,
        started=_when(parent.info.start_time), teachers=tuple(sorted(teachers)),
        curate=_curate(parent.data.metrics), trials=trials, baselines=_baselines(c, parent),
        metric=metric, mode=params.get("search.mode", "max"), analysis=_analysis(params),
        samples=int(params.get("sweep.evaluate.sampling.n", "1")),
    )
