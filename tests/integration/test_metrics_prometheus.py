"""mixray's metrics in a real Prometheus (Debian's, `make prometheus`), scraped every second
through Prometheus' HTTP API while the session's shared smoke sweep ran (`smoke_watch` started it
before the sweep: conftest.py). Its series carry the teacher, student and trial labels and the
stages' own counts (rows generated are the rows the generation wrote), and every metric the
Grafana dashboard (dashboards/mixray-sweep.json) queries has series in Prometheus, Ray's and
mixray's.

Counters are cumulative per process, and later tests of this session run sweeps in the same
process with the same teacher labels: teacher counts are read at the first run's end (with its
export lag) as increases over its start. A trial's series are its own (its trial label; the
share-0 trial is the first run's alone). Gauges leave Ray's export about 20 s after the process
that set them exits (a trial's, a Train worker's), so those are read with ``max_over_time``
since the sweep started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from promql import EVAL_ROWS, PROMETHEUS, REPO, settle, teacher_counts, tool, values

EXPORT_LAG_S = 30.0  # Ray's agents export every ~10 s; Prometheus scrapes every second

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary on PATH: `make "
                       "prometheus` installs Debian's package (as root)"),
]


def _generated(path: Path) -> dict[str, float]:
    """What a generation stage wrote: its rows, failed and truncated rows and tokens."""
    t = pq.read_table(path / "data", columns=["n_tokens", "finish_reason", "error"])
    return {"rows": t.num_rows, "failed": t.num_rows - t["error"].null_count,
            "truncated": pc.sum(pc.equal(t["finish_reason"], "length")).as_py() or 0,
            "tokens": pc.sum(t["n_tokens"]).as_py()}


def test_a_sweeps_metrics_reach_prometheus_with_their_labels(smoke_sweep, smoke_watch) -> None:
    cfg, first, _ = smoke_sweep
    url, watch = smoke_watch.url, smoke_watch
    assert first["status"] == "finished", first["trials"]
    row = next(t for t in first["trials"] if t["long_share"] == 0.0)
    trial, student = row["trial"], row["student"]
    # the counters as they stood once the first run's last exports had arrived
    settled_at = watch.ended + EXPORT_LAG_S
    time.sleep(max(0.0, settled_at + 2 - time.time()))

    # Teachers: the increase of each counter over the sweep is what the stage wrote.
    want = {}
    for label in cfg.teachers:
        stage = first["stages"][f"generate.{label}"]
        assert not stage["cached"]
        want |= {(k, label): v for k, v in _generated(Path(stage["path"])).items()}
        curated = first["stages"][f"curate.{label}"]["stats"]
        want |= {("curate_rows", label): curated["rows"],
                 ("curate_accepted_rows", label): curated["accepted"]}
    assert want[("rows", "long")] == cfg.problems.train_size * cfg.teachers["long"].sampling.n
    after = teacher_counts(url, at=settled_at)
    assert {k: after.get(k, 0.0) - watch.before.get(k, 0.0) for k in want} == want

    # The trial's evaluation: its rows under its own trial and student labels.
    trial_dir = cfg.root.trial_eval(first["invocation"], trial)
    eval_stage = Path(json.loads((trial_dir / "metrics.json").read_text())["generations"])
    evaluated = _generated(eval_stage)
    eval_rows = values(url, EVAL_ROWS, ("student", "trial"), at=settled_at)
    assert eval_rows.get((student, trial)) == evaluated["rows"]

    # Gauges set by processes that have exited since: their highest value since the sweep began.
    span = f"{int(time.time() - watch.started) + 5}s"

    def peak(name: str, match: str = "") -> dict[tuple[str, ...], float]:
        return values(url, f"max by (student, trial) (max_over_time({name}{{{match}}}[{span}]))",
                      ("student", "trial"))
    assert peak("ray_mixray_train_step")[(student, trial)] == cfg.train.max_steps
    for name in ("ray_mixray_train_loss", "ray_mixray_train_val_loss",
                 "ray_mixray_train_tokens_per_s"):
        value = peak(name).get((student, trial))
        assert value is not None and 0 < value < 1e7, (name, value)
    assert peak("ray_mixray_generate_progress", 'teacher="eval", trial!=""')[
        (student, trial)] == 1.0
    teachers_done = values(url, "max by (teacher) (max_over_time(ray_mixray_generate_progress"
                           f'{{teacher=~"long|short"}}[{span}]))', ("teacher",))
    assert teachers_done == {("long",): 1.0, ("short",): 1.0}

    # Trial states: the Tune experiment of the first run ended with both its trials finished.
    experiment = f"{cfg.name}-{first['invocation']}"
    want_states = {"pending": 0, "running": 0, "paused": 0, "finished": len(first["trials"]),
                   "stopped": 0, "errored": 0}
    states = settle(lambda: {s: v for (s,), v in values(
        url, f'ray_mixray_tune_trials{{experiment="{experiment}"}}', ("state",)).items()},
        want_states)
    assert states == want_states

    # The dashboard queries nothing Prometheus lacks.
    dashboards = tool()
    dashboard = json.loads((REPO / "dashboards" / "mixray-sweep.json").read_text())
    assert dashboards.missing_metrics(dashboard, dashboards.series_names(url)) == {}
