"""mixray's metrics without Ray (mixray/metrics.py, mixray/sweep/callbacks.py) and the dashboard
files that read them (dashboards/): names as Prometheus will hold them, labels, the no-op path
outside Ray, trial states, and a Grafana dashboard that only queries metrics that exist.

That the series reach a real Prometheus is tests/integration/test_metrics_prometheus.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray.tune.experiment import Trial

from mixray import metrics
from mixray.sweep import callbacks

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
PROMETHEUS_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# Ray's own metrics the dashboard plots (cluster utilisation); the integration test checks
# that they exist in a real Prometheus.
RAY_METRICS = {"ray_node_cpu_utilization", "ray_node_mem_used", "ray_node_mem_total",
               "ray_resources", "ray_tasks"}


def _prometheus_tool():
    """dashboards/prometheus.py by path (dashboards/ is no package)."""
    spec = importlib.util.spec_from_file_location("mixray_dashboards_prometheus",
                                                  DASHBOARDS / "prometheus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeMetric:
    """Stands in for a ray.util.metrics object: what was recorded, with which tags."""

    def __init__(self) -> None:
        self.points: list[tuple[float, dict[str, str]]] = []

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.points.append((value, tags))

    _record = set


@pytest.fixture()
def recorded(monkeypatch):
    """Record into fakes as if Ray were up: name -> FakeMetric."""
    fakes: dict[str, FakeMetric] = {}
    monkeypatch.setattr(metrics.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(metrics, "_metric", lambda spec: fakes.setdefault(spec.name, FakeMetric()))
    monkeypatch.setattr(metrics, "_context", {})
    monkeypatch.setattr(metrics, "_gauges", metrics._Gauges(refresh_s=None))  # no thread
    return fakes


def test_outside_ray_nothing_is_made_or_recorded(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_made", {})
    monkeypatch.setattr(metrics.ray, "is_initialized", lambda: False)  # whatever ran before
    metrics.record_generation("long", rows=4, failed=1, truncated=2, tokens=40)
    metrics.set_generation_progress("long", done=4, total=8, tokens_per_s=3.0)
    metrics.record_curation("long", rows=4, accepted=1)
    metrics.record_train_step({}, {"step": 1, "train_loss": 2.0, "tokens_per_s": 9.0})
    metrics.set_trial_states("exp", {"running": 1})
    assert metrics._made == {}


def test_names_are_prometheus_names_under_rays_prefix() -> None:
    for name, spec in metrics.SPECS.items():
        assert name == spec.name and name.startswith("mixray_") and PROMETHEUS_NAME.match(name)
        assert spec.exported == f"ray_{name}" + ("_total" if spec.kind == "counter" else "")
        assert all(re.fullmatch(r"[a-z_]+", k) for k in spec.tag_keys), spec
    by_prefix = {p: {s.tag_keys for s in metrics.SPECS.values() if s.name.startswith(p)}
                 for p in ("mixray_generate_", "mixray_curate_", "mixray_train_", "mixray_tune_")}
    assert by_prefix == {"mixray_generate_": {("teacher", "student", "trial")},
                         "mixray_curate_": {("teacher",)},
                         "mixray_train_": {("student", "trial")},
                         "mixray_tune_": {("experiment", "state")}}


def test_generation_carries_the_trial_context_and_zero_counts(recorded) -> None:
    metrics.set_context(student="tiny-random", trial="t-long0.5")
    metrics.record_generation("eval", rows=8, failed=0, truncated=3, tokens=64)
    metrics.set_generation_progress("eval", done=8, total=16, tokens_per_s=12.0)
    tags = {"teacher": "eval", "student": "tiny-random", "trial": "t-long0.5"}
    assert {name: fake.points for name, fake in recorded.items()} == {
        "mixray_generate_rows": [(8.0, tags)],
        "mixray_generate_failed_rows": [(0.0, tags)],  # at 0, so that the series exists
        "mixray_generate_truncated_rows": [(3.0, tags)],
        "mixray_generate_tokens": [(64.0, tags)],
        "mixray_generate_progress": [(0.5, tags)],
        "mixray_generate_tokens_per_s": [(12.0, tags)],
    }


def test_a_driver_without_context_leaves_student_and_trial_empty(recorded) -> None:
    metrics.record_curation("long", rows=24, accepted=5)
    metrics.record_generation("short", rows=1, failed=0, truncated=0, tokens=1)
    assert recorded["mixray_curate_accepted_rows"].points == [(5.0, {"teacher": "long"})]
    assert recorded["mixray_generate_rows"].points == [
        (1.0, {"teacher": "short", "student": "", "trial": ""})]


def test_train_step_sets_the_gauges_of_the_metrics_it_has(recorded) -> None:
    tags = {"student": "s", "trial": "t"}
    metrics.record_train_step(tags, {"step": 2, "train_loss": 1.5, "tokens_per_s": 100.0,
                                     "lr": 1e-3})
    assert {n: f.points for n, f in recorded.items()} == {
        "mixray_train_step": [(2.0, tags)], "mixray_train_loss": [(1.5, tags)],
        "mixray_train_tokens_per_s": [(100.0, tags)]}
    metrics.record_train_step(tags, {"step": 3, "train_loss": 1.4, "tokens_per_s": 90.0,
                                     "val_loss": 1.7})
    assert recorded["mixray_train_val_loss"].points == [(1.7, tags)]


def test_gauges_are_set_again_to_their_last_values(recorded) -> None:
    """Ray 2.60 drops a gauge that is not set for 20 s, even from a live process: a trial's
    'running' count or a slow step's loss must not vanish from the dashboard meanwhile."""
    tags = {"student": "s", "trial": "t"}
    metrics.record_train_step(tags, {"step": 1, "train_loss": 2.0, "tokens_per_s": 5.0})
    metrics.record_train_step(tags, {"step": 2, "train_loss": 1.5, "tokens_per_s": 6.0})
    metrics.record_generation("long", rows=3, failed=0, truncated=0, tokens=9)  # counters: not
    for fake in recorded.values():
        fake.points.clear()
    metrics._gauges.refresh()
    assert {n: f.points for n, f in recorded.items() if f.points} == {
        "mixray_train_step": [(2.0, tags)], "mixray_train_loss": [(1.5, tags)],
        "mixray_train_tokens_per_s": [(6.0, tags)]}


def test_trial_states_are_all_set_and_unknown_ones_refused(recorded) -> None:
    metrics.set_trial_states("smoke-1", {"running": 2, "finished": 1})
    got = {tags["state"]: v for v, tags in recorded["mixray_tune_trials"].points}
    assert got == {"pending": 0, "running": 2, "paused": 0, "finished": 1, "stopped": 0,
                   "errored": 0}
    with pytest.raises(ValueError, match="unknown trial states"):
        metrics.set_trial_states("smoke-1", {"done": 1})


def test_context_names_only_student_and_trial(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_context", {})
    metrics.set_context(student="a", trial="b")
    metrics.set_context(trial="c")  # replaces, never merges: a reused Tune actor's next trial
    assert metrics.context() == {"trial": "c"}
    with pytest.raises(ValueError, match="unknown metric context"):
        metrics.set_context(teacher="long")


def _trial(status: str, last_result: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(status=status, last_result=last_result or {})


def test_tune_states_tell_finished_from_stopped_early() -> None:
    from mixray.sweep.tune import COMPLETE

    assert callbacks.COMPLETE == COMPLETE
    trials = [_trial(Trial.TERMINATED, {COMPLETE: True, "eval_accuracy": 0.5}),
              _trial(Trial.TERMINATED, {"step": 2}),  # ASHA stopped it: no completion flag
              _trial(Trial.RUNNING), _trial(Trial.PENDING), _trial(Trial.PENDING),
              _trial(Trial.ERROR)]
    assert callbacks.state_counts(trials) == {"finished": 1, "stopped": 1, "running": 1,
                                                 "pending": 2, "errored": 1}


def test_tune_callback_publishes_at_most_once_an_interval_and_at_the_end(monkeypatch) -> None:
    published = []
    monkeypatch.setattr(metrics, "set_trial_states", lambda e, c: published.append((e, c)))
    callback = callbacks.TrialStateMetrics("exp", interval_s=3600.0)
    running = [_trial(Trial.RUNNING)]
    done = [_trial(Trial.TERMINATED, {callbacks.COMPLETE: True})]
    callback.on_step_end(iteration=1, trials=running)
    callback.on_step_end(iteration=2, trials=running)
    callback.on_experiment_end(trials=done)
    assert published == [("exp", {"running": 1}), ("exp", {"finished": 1})]


def _dashboard() -> dict:
    return json.loads((DASHBOARDS / "mixray-sweep.json").read_text())


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    dash = _dashboard()
    source = yaml.safe_load((DASHBOARDS / "provisioning/datasources/prometheus.yml").read_text())
    [datasource] = source["datasources"]
    assert datasource["type"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert dash["uid"] and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == datasource["uid"]
    assert {v["datasource"]["uid"] for v in dash["templating"]["list"]} == {datasource["uid"]}


def test_the_dashboard_plots_every_mixray_metric_and_names_no_other() -> None:
    prom = _prometheus_tool()
    named = set().union(*(prom.metric_names(e) for _, e in prom.dashboard_queries(_dashboard())))
    assert {n for n in named if n.startswith("ray_mixray_")} == \
        {s.exported for s in metrics.SPECS.values()}
    assert {n for n in named if not n.startswith("ray_mixray_")} == RAY_METRICS


def test_provisioning_loads_this_folders_dashboards_and_rays() -> None:
    providers = yaml.safe_load(
        (DASHBOARDS / "provisioning/dashboards/mixray.yml").read_text())["providers"]
    assert {p["name"]: p["options"]["path"] for p in providers} == {
        "mixray": "${MIXRAY_DASHBOARDS}", "ray": "${RAY_GRAFANA_DASHBOARDS}"}


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (teacher) (rate(a_total{x="y", z=~"$v"}[$__rate_interval]))', {"a_total"}),
    ("max(b) by (trial) / on(trial) group_left c offset 5m > bool 1", {"b", "c"}),
    ("label_values(ray_node_cpu_utilization, SessionName)", {"ray_node_cpu_utilization"}),
    ('histogram_quantile(0.9, sum by (le) (rate(d_bucket{s="a(b)"}[1m])))', {"d_bucket"}),
])
def test_metric_names_finds_the_metrics_of_a_query(expr: str, names: set[str]) -> None:
    assert _prometheus_tool().metric_names(expr) == names


def test_prometheus_config_reads_the_given_discovery_file_on_loopback(tmp_path) -> None:
    prom = _prometheus_tool()
    shipped = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    [job] = shipped["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    cfg = prom.render_config(tmp_path / "sd.json", interval_s=1)
    assert cfg["global"]["scrape_interval"] == "1s"
    assert cfg["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(tmp_path / "sd.json")]
    argv = prom.command("prometheus", tmp_path, 9999)
    assert "--web.listen-address=127.0.0.1:9999" in argv
    assert f"--storage.tsdb.path={tmp_path / 'data'}" in argv


def test_stop_leaves_a_pid_that_is_no_prometheus_alone(tmp_path) -> None:
    import os

    (tmp_path / "prometheus.pid").write_text(f"{os.getpid()}\n")  # pytest's: not a prometheus
    assert _prometheus_tool().stop(tmp_path) is False
    assert not (tmp_path / "prometheus.pid").exists()
