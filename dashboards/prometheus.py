"""Start and stop a Prometheus that scrapes a Ray cluster: `make dashboards` / `dashboards-down`
call ``python dashboards/prometheus.py up|down``.

`up` renders dashboards/prometheus.yml with the cluster's service discovery file (Ray's head
writes ``<temp dir>/prom_metrics_service_discovery.json``, listing every node's metrics port) and
a scrape interval, then starts Debian's ``prometheus`` on 127.0.0.1 only, its config, TSDB, log
and PID file in one directory of its own. `down` stops exactly that process, by its PID.
`check` asks a running Prometheus whether every metric the Grafana dashboard's queries name
(dashboards/mixray-sweep.json) has series: Grafana itself is not installable everywhere.

This lives in dashboards/, not mixray/: it is tooling around a cluster, and the sweep never
imports it; the tests load it by path.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "prometheus.yml"
DASHBOARD = HERE / "mixray-sweep.json"
PID_FILE = "prometheus.pid"
READY_TIMEOUT_S = 60.0  # about 1 s here; Prometheus replays its TSDB's WAL before it is ready
STOP_GRACE_S = 10.0

log = logging.getLogger("mixray.dashboards")


def render_config(sd_file: Path, interval_s: float | None = None,
                  template: Path = TEMPLATE) -> dict[str, Any]:
    """The template with its Ray job reading ``sd_file``, every interval ``interval_s`` (None:
    the template's)."""
    cfg = copy.deepcopy(yaml.safe_load(template.read_text()))
    ray_job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "ray")
    ray_job["file_sd_configs"][0]["files"] = [str(Path(sd_file).absolute())]
    if interval_s is not None:
        cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = f"{interval_s}s"
        ray_job["file_sd_configs"][0]["refresh_interval"] = f"{interval_s}s"
    return cfg


def command(binary: str, run_dir: Path, port: int) -> list[str]:
    """Prometheus on 127.0.0.1:``port``, config and TSDB in ``run_dir``."""
    return [binary, f"--config.file={run_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={run_dir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=7d"]


def start(run_dir: Path, sd_file: Path, port: int, interval_s: float | None = None,
          binary: str = "prometheus") -> int:
    """Start Prometheus in the background, wait until it is ready; returns its PID (also in
    ``run_dir/prometheus.pid``). Raises ValueError when there is no such binary."""
    found = shutil.which(binary)
    if found is None:
        raise ValueError(f"no {binary!r} on PATH: `make dashboards` installs Debian's "
                         "prometheus package as root (apt-get install prometheus)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "prometheus.yml").write_text(yaml.safe_dump(render_config(sd_file, interval_s)))
    with open(run_dir / "prometheus.log", "ab") as out:
        proc = subprocess.Popen(command(found, run_dir, port), stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    (run_dir / PID_FILE).write_text(f"{proc.pid}\n")
    wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc.pid


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> None:
    """Until ``url``/-/ready answers 200; raises RuntimeError if Prometheus exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}: see its log")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"prometheus at {url} not ready after {timeout:.0f} s")


def stop(run_dir: Path) -> bool:
    """Stop the Prometheus whose PID ``run_dir`` holds, if it still is one; True if stopped."""
    pid_file = run_dir / PID_FILE
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    if not _is_prometheus(pid):
        log.warning("pid %d is no longer a prometheus: left alone", pid)
        return False
    os.kill(pid, signal.SIGTERM)  # Prometheus flushes its head block on SIGTERM
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and _is_prometheus(pid):
        time.sleep(0.2)
    if _is_prometheus(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def _is_prometheus(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z" and b"prometheus" in cmdline.split(b"\0")[0]


# PromQL words that are not metric names where `metric_names` looks (before "(": functions).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana's ``label_values(metric, label)``)
    reads: strings, label matchers, ranges and grouping labels taken out, then every identifier
    that is no function call and no keyword."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r" \1 ", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w$.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {n for n in names if n.lower() not in KEYWORDS}


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, query) of every panel target and templating variable of a Grafana dashboard."""
    found = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target.get('refId', '')}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        found.append((f"variable {var['name']!r}",
                      query["query"] if isinstance(query, dict) else str(query)))
    return found


def series_names(url: str) -> set[str]:
    """Every metric name a Prometheus at ``url`` holds series of."""
    with urllib.request.urlopen(f"{url}/api/v1/label/__name__/values", timeout=10) as resp:
        return set(json.load(resp)["data"])


def missing_metrics(dashboard: dict[str, Any], present: set[str]) -> dict[str, list[str]]:
    """where -> the metrics its query names that ``present`` lacks (only where some are)."""
    return {where: sorted(names) for where, expr in dashboard_queries(dashboard)
            if (names := metric_names(expr) - present)}


def check(args: argparse.Namespace) -> int:
    dashboard = json.loads(Path(args.dashboard).read_text())
    missing = missing_metrics(dashboard, series_names(args.url))
    for where, names in missing.items():
        print(f"{where}: no series of {', '.join(names)}")
    print(f"{len(dashboard_queries(dashboard)) - len(missing)} queries have all their series"
          + (f", {len(missing)} do not" if missing else ""))
    return 1 if missing else 0


def up(args: argparse.Namespace) -> int:
    run_dir = Path(args.dir).absolute()
    if (run_dir / PID_FILE).exists() and _is_prometheus(int((run_dir / PID_FILE).read_text())):
        log.info("prometheus already running (%s): `make dashboards-down` first", run_dir)
        return 0
    if not Path(args.sd_file).exists():
        log.warning("%s does not exist yet: Prometheus reads it once a Ray head writes it "
                    "(is the cluster up, with its dashboard?)", args.sd_file)
    pid = start(run_dir, Path(args.sd_file), args.port, args.interval)
    print(f"prometheus: http://127.0.0.1:{args.port}  (pid {pid} in {run_dir / PID_FILE}, "
          f"log {run_dir / 'prometheus.log'})")
    return 0


def down(args: argparse.Namespace) -> int:
    run_dir = Path(args.dir).absolute()
    print("stopped prometheus" if stop(run_dir) else f"no prometheus running from {run_dir}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dashboards/prometheus.py",
                                description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--url", default="http://127.0.0.1:9090")
    c.add_argument("--dashboard", default=str(DASHBOARD))
    for name in ("up", "down"):
        s = sub.add_parser(name)
        s.add_argument("--dir", default="/tmp/mixray-prometheus",
                       help="its config, TSDB, log and PID file")
        if name == "up":
            s.add_argument("--sd-file", default="/tmp/ray/prom_metrics_service_discovery.json",
                           help="Ray's service discovery file: <ray temp dir>/prom_metrics_...")
            s.add_argument("--port", type=int, default=9090)
            s.add_argument("--interval", type=float, default=None,
                           help="scrape interval in seconds (default: prometheus.yml's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        return {"up": up, "down": down, "check": check}[args.cmd](args)
    except (ValueError, RuntimeError, TimeoutError, OSError) as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
