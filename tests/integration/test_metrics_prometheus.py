"""mixray's metrics in a real Prometheus (Debian's, `make prometheus`): a one-trial smoke sweep on
the session's Ray cluster, scraped every second through Prometheus' HTTP API. Its series carry
the teacher, student and trial labels and the stages' own counts (rows generated are the rows
the generation wrote), and every metric the Grafana dashboard (dashboards/mixray-sweep.json)
queries has series in Prometheus, Ray's and mixray's.

Counters are cumulative per process, and the sweeps of other tests in this session ran in this
same process with the same teacher labels: teacher counts are compared as increases over the
sweep. A trial's series are its own (its trial label). Gauges leave Ray's export about 20 s
after the process that set them exits (a trial's, a Train worker's), so those are read with
``max_over_time`` over the test's span.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mixray.config import load_sweep
from mixray.sweep.run import run_sweep

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
SETTLE_S = 60.0  # Ray's agents export about every 10 s; Prometheus scrapes every second

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary on PATH: `make "
                       "prometheus` installs Debian's package (as root)"),
]


def _tool():
    spec = importlib.util.spec_from_file_location("mixray_dashboards_prometheus",
                                                  REPO / "dashboards" / "prometheus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory, free_ports):
    """Prometheus on 127.0.0.1 scraping every node of the session's cluster each second. The
    session cluster runs without Ray's dashboard, whose reporter writes the service discovery
    file, so the test writes one of the same form from `ray.nodes()`."""
    tool, run_dir = _tool(), tmp_path_factory.mktemp("prometheus")
    targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}"
               for n in ray_cluster.nodes() if n["Alive"]]
    sd_file = run_dir / "sd.json"
    sd_file.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    [port] = free_ports(1)
    tool.start(run_dir, sd_file, port, interval_s=1, binary=PROMETHEUS)
    url = f"http://127.0.0.1:{port}"
    try:
        _settle(lambda: _values(url, 'up{job="ray"}', ()), {(): 1.0})  # scraped once at least
        yield url
    finally:
        tool.stop(run_dir)


def _values(url: str, expr: str, by: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """An instant query's result: the labels ``by`` of each series -> its value."""
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return {tuple(r["metric"].get(k, "") for k in by): float(r["value"][1])
            for r in body["data"]["result"]}


def _settle(read: Callable[[], Any], want: Any, timeout: float = SETTLE_S) -> Any:
    """``read()`` once it equals ``want``, or its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (got := read()) != want and time.monotonic() < deadline:
        time.sleep(1)
    return got


def _generated(path: Path) -> dict[str, float]:
    """What a generation stage wrote: its rows, failed and truncated rows and tokens."""
    t = pq.read_table(path / "data", columns=["n_tokens", "finish_reason", "error"])
    return {"rows": t.num_rows, "failed": t.num_rows - t["error"].null_count,
            "truncated": pc.sum(pc.equal(t["finish_reason"], "length")).as_py() or 0,
            "tokens": pc.sum(t["n_tokens"]).as_py()}


GENERATION_COUNTERS = {"rows": "ray_mixray_generate_rows_total",
                       "failed": "ray_mixray_generate_failed_rows_total",
                       "truncated": "ray_mixray_generate_truncated_rows_total",
                       "tokens": "ray_mixray_generate_tokens_total"}


def _teacher_counts(url: str) -> dict[tuple[str, str], float]:
    """(count, teacher) -> this process's (the driver's) teacher counters, eval left out."""
    got = {}
    for count, name in GENERATION_COUNTERS.items():
        for (teacher,), v in _values(url, f'sum by (teacher) ({name}{{teacher!~"eval|judge"}})',
                                     ("teacher",)).items():
            got[(count, teacher)] = v
    for count in ("rows", "accepted_rows"):
        for (teacher,), v in _values(url, f"sum by (teacher) (ray_mixray_curate_{count}_total)",
                                     ("teacher",)).items():
            got[(f"curate_{count}", teacher)] = v
    return got


EVAL_ROWS = ('sum by (student, trial) '
             '(ray_mixray_generate_rows_total{teacher="eval", trial!=""})')


def _grown(url: str, expr: str, by: tuple[str, ...], before: dict) -> dict:
    """The series of ``expr`` that grew since ``before``, by how much."""
    now = _values(url, expr, by)
    return {k: v - before.get(k, 0.0) for k, v in now.items() if v != before.get(k, 0.0)}


def test_a_sweeps_metrics_reach_prometheus_with_their_labels(prometheus, tmp_path) -> None:
    url, started = prometheus, time.monotonic()
    # Other sweeps of this session had trials of the same name: evaluation rows grow too.
    before, eval_before = _teacher_counts(url), _values(url, EVAL_ROWS, ("student", "trial"))
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [
        f"run_root={tmp_path}",  # a fresh run root: every stage really runs, none is cached
        "name=smoke-metrics", "search.long_share=[0.5]",
        "mix.validation_problems=4"])  # so that val_loss, which the dashboard plots, is measured
    summary = run_sweep(cfg)
    assert summary["status"] == "finished", summary["trials"]
    [row] = summary["trials"]
    trial, student = row["trial"], row["student"]

    # Teachers: the increase of each counter over the sweep is what the stage wrote.
    want = {}
    for label in cfg.teachers:
        stage = summary["stages"][f"generate.{label}"]
        assert not stage["cached"]
        want |= {(k, label): v for k, v in _generated(Path(stage["path"])).items()}
        curated = summary["stages"][f"curate.{label}"]["stats"]
        want |= {("curate_rows", label): curated["rows"],
                 ("curate_accepted_rows", label): curated["accepted"]}
    assert want[("rows", "long")] == cfg.problems.train_size * cfg.teachers["long"].sampling.n

    def grown() -> dict:
        now = _teacher_counts(url)
        return {k: now.get(k, 0.0) - before.get(k, 0.0) for k in want}
    assert _settle(grown, want) == want

    # The trial's evaluation: its rows under its own trial and student labels.
    trial_dir = next((tmp_path / "trials").glob(f"*/{trial}"))
    eval_stage = Path(json.loads((trial_dir / "eval" / "metrics.json").read_text())["generations"])
    evaluated = _generated(eval_stage)
    eval_rows = _settle(lambda: _grown(url, EVAL_ROWS, ("student", "trial"), eval_before),
                        {(student, trial): evaluated["rows"]})
    assert eval_rows == {(student, trial): evaluated["rows"]}

    # Gauges set by processes that have exited since: their highest value over this test.
    span = f"{int(time.monotonic() - started) + 5}s"

    def peak(name: str, match: str = "") -> dict[tuple[str, ...], float]:
        return _values(url, f"max by (student, trial) (max_over_time({name}{{{match}}}[{span}]))",
                       ("student", "trial"))
    assert peak("ray_mixray_train_step") == {(student, trial): cfg.train.max_steps}
    for name in ("ray_mixray_train_loss", "ray_mixray_train_val_loss",
                 "ray_mixray_train_tokens_per_s"):
        [(labels, value)] = peak(name).items()
        assert labels == (student, trial) and 0 < value < 1e7, (name, value)
    assert peak("ray_mixray_generate_progress", 'teacher="eval", trial!=""') == {
        (student, trial): 1.0}
    teachers_done = _values(url, "max by (teacher) (max_over_time(ray_mixray_generate_progress"
                            f'{{teacher=~"long|short"}}[{span}]))', ("teacher",))
    assert teachers_done == {("long",): 1.0, ("short",): 1.0}

    # Trial states: the Tune experiment of this invocation ended with its one trial finished.
    experiment = f"{cfg.name}-{summary['invocation']}"
    states = _settle(lambda: {s: v for (s,), v in _values(
        url, f'ray_mixray_tune_trials{{experiment="{experiment}"}}', ("state",)).items()},
        {"pending": 0, "running": 0, "paused": 0, "finished": 1, "stopped": 0, "errored": 0})
    assert states == {"pending": 0, "running": 0, "paused": 0, "finished": 1, "stopped": 0,
                      "errored": 0}

    # The dashboard queries nothing Prometheus lacks.
    tool = _tool()
    dashboard = json.loads((REPO / "dashboards" / "mixray-sweep.json").read_text())
    assert tool.missing_metrics(dashboard, tool.series_names(url)) == {}
