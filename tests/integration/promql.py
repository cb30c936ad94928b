"""Prometheus for the integration tests: started before the session's shared smoke sweep
(conftest.py) and read by test_metrics_prometheus.py through its HTTP API. Not a test module."""

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

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
SETTLE_S = 60.0  # Ray's agents export about every 10 s; Prometheus scrapes every second
GENERATION_COUNTERS = {"rows": "ray_mixray_generate_rows_total",
                       "failed": "ray_mixray_generate_failed_rows_total",
                       "truncated": "ray_mixray_generate_truncated_rows_total",
                       "tokens": "ray_mixray_generate_tokens_total"}
EVAL_ROWS = ('sum by (student, trial) '
             '(ray_mixray_generate_rows_total{teacher="eval", trial!=""})')


def tool():
    """dashboards/prometheus.py (start, stop, the dashboard's queries), loaded from its file."""
    spec = importlib.util.spec_from_file_location("mixray_dashboards_prometheus",
                                                  REPO / "dashboards" / "prometheus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def values(url: str, expr: str, by: tuple[str, ...],
           at: float | None = None) -> dict[tuple[str, ...], float]:
    """An instant query's result (now, or at the Unix time ``at``): the labels ``by`` of each
    series -> its value."""
    query = urllib.parse.urlencode({"query": expr} | ({"time": f"{at:.3f}"} if at else {}))
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return {tuple(r["metric"].get(k, "") for k in by): float(r["value"][1])
            for r in body["data"]["result"]}


def settle(read: Callable[[], Any], want: Any, timeout: float = SETTLE_S) -> Any:
    """``read()`` once it equals ``want``, or its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (got := read()) != want and time.monotonic() < deadline:
        time.sleep(1)
    return got


def teacher_counts(url: str, at: float | None = None) -> dict[tuple[str, str], float]:
    """(count, teacher) -> the teacher counters of the session's processes, eval left out."""
    got = {}
    for count, name in GENERATION_COUNTERS.items():
        for (teacher,), v in values(url, f'sum by (teacher) ({name}{{teacher!~"eval|judge"}})',
                                    ("teacher",), at).items():
            got[(count, teacher)] = v
    for count in ("rows", "accepted_rows"):
        for (teacher,), v in values(url, f"sum by (teacher) (ray_mixray_curate_{count}_total)",
                                    ("teacher",), at).items():
            got[(f"curate_{count}", teacher)] = v
    return got
