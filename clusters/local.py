"""Start and stop a rehearsal cluster on this machine: `make cluster-up` / `cluster-down` /
`cluster-status` call ``python clusters/local.py up|down|status``.

`up` starts, bound to 127.0.0.1 and on free ports so that it coexists with other Ray clusters on
the machine (CI's, a laptop sweep's):
  * a Ray head on Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1``) with clusters/local.yaml
    as its autoscaling config, whose provider (clusters/local_provider.py) launches `teacher` /
    `trainer` worker nodes on demand, each in its own mount namespace;
  * a lean MLflow server whose store (``mlflow.db``, ``mlartifacts/``) is in the run root.
It writes what clients need and what `down` stops to ``<cluster dir>/cluster.env``.

`down` stops exactly that cluster: every process whose environment carries
``MIXRAY_LOCAL_CLUSTER_DIR=<cluster dir>`` (the head, its autoscaler, every worker node, jobs'
drivers) and the MLflow server by its PID. Never `ray stop`: it stops every cluster here.

This lives in clusters/, not mixray/: it is tooling around a cluster, like aws.yaml, and the sweep
never imports it; the unit tests load it by path.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # local_provider, also when loaded by path (tests)

import local_provider
from local_provider import CLUSTER_ENV, free_ports, namespace_command, pids_with_env

log = logging.getLogger("mixray.cluster")

TEMPLATE = HERE / "local.yaml"
VENV_BIN = Path(sys.executable).parent
STATE = "cluster.env"
# Unix socket paths are limited to 107 bytes; Ray's longest here is about
# <temp dir>/session_2025-01-01_00-00-00_000000_1234567/sockets/plasma_store (66 bytes more).
MAX_CLUSTER_DIR = 30
READY_TIMEOUT_S = 120.0   # MLflow answers in about 8 s on a quiet 2-core machine, Ray in 5-10 s
STOP_GRACE_S = 10.0   # then SIGKILL (`ray stop` waits 16 s); no process here has state to flush


@dataclass(frozen=True)
class Ports:
    gcs: int
    dashboard: int
    agent: int
    client: int
    mlflow: int


@dataclass(frozen=True)
class Cluster:
    """One rehearsal cluster: its directory (under /tmp), shared run root and ports."""

    dir: Path
    run_root: Path
    ports: Ports

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports.gcs}"

    @property
    def ray_address(self) -> str:
        """For `ray job submit --address` (the dashboard's job API)."""
        return f"http://127.0.0.1:{self.ports.dashboard}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def head_temp_dir(self) -> Path:
        return self.dir / local_provider.HEAD_TEMP


# ---------------------------------------------------------------------------------------------
# pure parts: paths, config, commands (unit-tested)
# ---------------------------------------------------------------------------------------------

def private_dirs(template: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The template's private dirs plus ``$MIXRAY_CACHE`` when set: a model cache must not be
    shared wherever it lives (mixray hands the driver's value to every worker)."""
    dirs = list(template["provider"].get("private_dirs", []))
    if env.get("MIXRAY_CACHE"):
        dirs.append(env["MIXRAY_CACHE"])
    return dirs


def check_paths(cluster_dir: Path, run_root: Path, private: list[str]) -> None:
    """Refuse layouts that would break isolation or Ray: ValueError saying why."""
    if not cluster_dir.is_absolute() or not run_root.is_absolute():
        raise ValueError("cluster dir and run root must be absolute paths")
    if cluster_dir.parent != Path("/tmp"):
        raise ValueError(f"cluster dir {cluster_dir} must be /tmp/<name>: worker nodes get a "
                         "/tmp of their own, which is what hides the head's files from them")
    if len(str(cluster_dir)) > MAX_CLUSTER_DIR:
        raise ValueError(f"cluster dir {cluster_dir} is longer than {MAX_CLUSTER_DIR} characters "
                         "(Ray's unix socket paths must stay under 107 bytes)")
    for d in private:
        p = Path(os.path.expanduser(d))
        if run_root == p or p in run_root.parents:
            raise ValueError(f"run root {run_root} is under {p}, which worker nodes do not see: "
                             "put it where every node sees it (e.g. under /work or /srv)")


def render_config(template: dict[str, Any], cluster: Cluster, private: list[str],
                  idle_minutes: float | None, head_cpus: int | None = None) -> dict[str, Any]:
    """The head's --autoscaling-config: the template with this cluster's addresses and dirs
    (and, given, the head's CPUs: local.yaml's head has none)."""
    cfg = copy.deepcopy(template)
    cfg["provider"].update(gcs_address=cluster.gcs_address, cluster_dir=str(cluster.dir),
                           private_dirs=private)
    if idle_minutes is not None:
        cfg["idle_timeout_minutes"] = idle_minutes
    if head_cpus is not None:
        cfg["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"] = head_cpus
    return cfg


def head_command(cluster: Cluster, cfg: dict[str, Any], config_path: Path) -> list[str]:
    """`ray start --head` with every port of its own, the dashboard (job API) on 127.0.0.1.

    No --node-ip-address=127.0.0.1: Ray replaces a loopback node IP by the machine's own address
    (services.resolve_ip_for_localhost) and its gRPC servers (GCS, raylets, object managers)
    listen on all interfaces whatever it is; token auth guards them (clusters/README.md)."""
    head = cfg["available_node_types"][cfg["head_node_type"]]
    res = dict(head.get("resources", {}))
    argv = [str(VENV_BIN / "ray"), "start", "--head",
            f"--port={cluster.ports.gcs}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={cluster.ports.dashboard}",
            f"--dashboard-agent-listen-port={cluster.ports.agent}",
            f"--ray-client-server-port={cluster.ports.client}",
            f"--temp-dir={cluster.head_temp_dir}", "--min-worker-port=0", "--max-worker-port=0",
            f"--num-cpus={res.pop('CPU', 0)}", f"--num-gpus={res.pop('GPU', 0)}",
            f"--autoscaling-config={config_path}", "--include-dashboard=true",
            "--disable-usage-stats"]
    if res:
        argv.append(f"--resources={json.dumps(res)}")
    store = head.get("node_config", {}).get("object_store_memory")
    if store:
        argv.append(f"--object-store-memory={int(store)}")
    return argv


def mlflow_command(cluster: Cluster) -> list[str]:
    """A lean MLflow server (1 worker; `mlflow ui` is 15 processes) with its store in the run
    root, on 127.0.0.1: every node shares this machine's loopback."""
    return [str(VENV_BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{cluster.run_root / 'mlflow.db'}",
            "--artifacts-destination", str(cluster.run_root / "mlartifacts"),
            "--workers", "1", "--host", "127.0.0.1", "--port", str(cluster.ports.mlflow)]


def head_env(base: dict[str, str], cluster: Cluster) -> dict[str, str]:
    """The head's environment: fake-cluster mode, token auth, the provider importable, vLLM not
    (head_site/sitecustomize.py), the venv first on PATH (a job's entrypoint `python` runs on the
    head) and this cluster's marker."""
    env = {k: v for k, v in base.items() if k != "RAY_ADDRESS"}
    pythonpath = [str(HERE), str(HERE / local_provider.HEAD_SITE),
                  *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(RAY_FAKE_CLUSTER="1", RAY_AUTH_MODE="token", PYTHONPATH=os.pathsep.join(pythonpath),
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    env[CLUSTER_ENV] = str(cluster.dir)
    return env


def state_lines(cluster: Cluster, mlflow_pid: int) -> list[str]:
    """``<cluster dir>/cluster.env``: sourceable (``set -a; . cluster.env``) by a client shell."""
    values = {
        "RAY_ADDRESS": cluster.ray_address, "RAY_AUTH_MODE": "token",
        "RAY_GCS_ADDRESS": cluster.gcs_address, "MLFLOW_TRACKING_URI": cluster.tracking_uri,
        "MIXRAY_RUN_ROOT": str(cluster.run_root), "MIXRAY_CLUSTER_DIR": str(cluster.dir),
        "MIXRAY_CLUSTER_MLFLOW_PID": str(mlflow_pid),
    }
    return [f"{k}={shlex.quote(v)}" for k, v in values.items()]


def read_state(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = shlex.split(value)[0] if value else ""
    return out


# ---------------------------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------------------------

def ensure_token() -> None:
    """Ray 2.60 token auth: every node reads ~/.ray/auth_token (clusters/README.md, section 1)."""
    if not (Path.home() / ".ray" / "auth_token").exists():
        log.info("creating ~/.ray/auth_token (ray get-auth-token --generate)")
        subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], check=True,
                       stdout=subprocess.DEVNULL)


def shared_dirs() -> list[str]:
    """What every node has at the head's paths although it may lie in a private dir (a checkout
    under /tmp): the code (installed editable) and the venv, as on every real node."""
    return sorted({str(HERE.parent), sys.prefix})


def preflight_isolation(cluster: Cluster, private: list[str], shared: list[str]) -> None:
    """Run the worker nodes' namespace once with a probe, so a machine that cannot (no unshare,
    no root and no user namespaces) fails here and not as nodes that never join."""
    root = cluster.dir / "nodes" / "preflight"
    mounts = local_provider.private_mounts(private, root, shared)
    for m in mounts:
        if m.source and not m.shared:
            Path(m.source).mkdir(parents=True, exist_ok=True)
    probe = [sys.executable, "-c", _PROBE, json.dumps({
        "run_root": str(cluster.run_root), "shared": shared,
        "private": [m.target for m in mounts if not m.shared]})]
    cmd = namespace_command(mounts, probe, as_root=os.geteuid() == 0)
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    shutil.rmtree(root)
    if out.returncode != 0:
        raise RuntimeError("worker-node isolation does not work here (use --isolation none to run "
                           f"without it):\n{out.stderr.strip()}")
    log.info("isolation checked: %s", out.stdout.strip())


# Inside a node's namespace: the private dirs must be empty but for the way down to the shared
# dirs, and the run root and the shared dirs visible.
_PROBE = """
import json, os, sys
p = json.loads(sys.argv[1])
assert os.path.isdir(p["run_root"]), f"run root {p['run_root']} not visible"
missing = [d for d in p["shared"] if not os.listdir(d)]
assert not missing, f"shared dirs not visible in the namespace: {missing}"
ways = {os.path.relpath(s, d).split(os.sep)[0] for d in p["private"] for s in p["shared"]
        if s.startswith(d.rstrip("/") + "/")}
full = [d for d in p["private"] if set(os.listdir(d)) - ways]
assert not full, f"not empty in the namespace: {full}"
print(f"{len(p['private'])} private dirs empty, run root and {len(p['shared'])} shared dirs "
      "visible")
"""


def wait_until(what: str, ready, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(1.0)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True   # it answered (e.g. 401 without the token)
    except OSError:
        return False


def _listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_mlflow(cluster: Cluster) -> subprocess.Popen:
    cluster.run_root.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                        CLUSTER_ENV: str(cluster.dir)}
    with open(cluster.dir / "mlflow.log", "ab") as out:
        proc = subprocess.Popen(mlflow_command(cluster), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, env=env, start_new_session=True)
    log.info("mlflow server pid %d: %s (log %s)", proc.pid, cluster.tracking_uri,
             cluster.dir / "mlflow.log")
    return proc


def up(args: argparse.Namespace) -> int:
    cluster_dir = Path(args.cluster_dir).absolute()
    if (cluster_dir / STATE).exists() or pids_with_env(CLUSTER_ENV, str(cluster_dir)):
        log.error("a cluster is already up in %s: `make cluster-down` first", cluster_dir)
        return 1
    template = yaml.safe_load(Path(args.config).read_text())
    private = private_dirs(template, dict(os.environ))
    run_root = Path(args.run_root).absolute()
    check_paths(cluster_dir, run_root, private)
    shared = shared_dirs()
    template["provider"].update(isolation=args.isolation, shared_dirs=shared)
    cluster = Cluster(cluster_dir, run_root, Ports(*free_ports(5)))

    shutil.rmtree(cluster_dir, ignore_errors=True)   # the last run's logs and node disks
    cluster_dir.mkdir(parents=True)
    run_root.mkdir(parents=True, exist_ok=True)
    if args.isolation == "namespace":
        preflight_isolation(cluster, private, shared)
    ensure_token()
    cfg = render_config(template, cluster, private, args.idle_minutes, args.head_cpus)
    set_boot_delay(cluster_dir, args.boot_delay)
    try:
        start(cluster, cfg)
    except BaseException:
        log.error("cluster-up failed: stopping what it started")
        down(argparse.Namespace(cluster_dir=str(cluster_dir)))
        raise
    print(summary(cluster))
    return 0


def set_boot_delay(cluster_dir: Path, seconds: float) -> None:
    """How long each worker node launched from now on sleeps before its `ray start`: a cloud
    node's boot and setup commands, minutes on GPU VMs (clusters/README.md)."""
    if seconds < 0:
        raise ValueError(f"boot delay {seconds} s: must be 0 or more")
    (cluster_dir / local_provider.BOOT_DELAY_FILE).write_text(f"{seconds:g}\n")


def boot_delay(args: argparse.Namespace) -> int:
    cluster_dir = Path(args.cluster_dir).absolute()
    if not (cluster_dir / STATE).exists():
        print(f"no cluster up in {args.cluster_dir}")
        return 1
    set_boot_delay(cluster_dir, args.seconds)
    log.info("worker nodes launched from now on boot in %g s", args.seconds)
    return 0


def start(cluster: Cluster, cfg: dict[str, Any]) -> None:
    """MLflow, then the Ray head; the state file is written as soon as there is a PID in it."""
    config_path = cluster.dir / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    started = time.monotonic()
    mlflow = start_mlflow(cluster)
    (cluster.dir / STATE).write_text("\n".join(state_lines(cluster, mlflow.pid)) + "\n")
    subprocess.run(head_command(cluster, cfg, config_path), check=True,
                   env=head_env(dict(os.environ), cluster), stdout=sys.stderr)
    wait_until("the job agent", lambda: _listens(cluster.ports.agent))
    report_node_groups(cluster, cfg)
    wait_until("the MLflow server", lambda: _answers(f"{cluster.tracking_uri}/health"))
    log.info("cluster up in %.0f s", time.monotonic() - started)


def node_groups(cfg: dict[str, Any]) -> bytes:
    """The autoscaling config's node types as Ray's ClusterConfig record (serialized): each
    type's resources and most nodes, the head's counted once."""
    from ray.core.generated import autoscaler_pb2

    record = autoscaler_pb2.ClusterConfig()
    for name, node in cfg["available_node_types"].items():
        group = record.node_group_configs.add(name=name)
        group.max_count = 1 if name == cfg["head_node_type"] else node.get("max_workers", 0)
        group.min_count = 1 if name == cfg["head_node_type"] else node.get("min_workers", 0)
        for key, amount in (node.get("resources") or {}).items():
            if amount:  # the record holds whole units (uint64); local.yaml's are whole
                assert float(amount).is_integer(), f"{name}.{key}: {amount} is not whole"
                group.resources[key] = int(amount)
    return record.SerializeToString()


def report_node_groups(cluster: Cluster, cfg: dict[str, Any]) -> None:
    """Tell the GCS what node types the autoscaler may start, as Ray's autoscaler v2 and
    KubeRay do (the fake provider's v1 autoscaler reports nothing): what mixray.cluster's
    capacity check, and Ray Data's autoscaling, read to learn that a type from 0 nodes exists."""
    # In a process of its own: Ray reads RAY_AUTH_MODE once, when it is first imported (here, by
    # local_provider), and this CLI's own environment has no token auth.
    code = ("import sys; from ray._raylet import GcsClient; "
            "GcsClient(address=sys.argv[1]).report_cluster_config(sys.stdin.buffer.read())")
    subprocess.run([sys.executable, "-c", code, cluster.gcs_address], input=node_groups(cfg),
                   env=head_env(dict(os.environ), cluster), check=True)
    log.info("reported the node types %s to the GCS", sorted(cfg["available_node_types"]))


def summary(cluster: Cluster) -> str:
    logs = cluster.head_temp_dir / "session_latest" / "logs"
    return "\n".join([
        (f"RAY_ADDRESS={cluster.ray_address}   (ray job submit; Python drivers on this machine: "
         f"ray.init('{cluster.gcs_address}'))"),
        f"MLFLOW_TRACKING_URI={cluster.tracking_uri}",
        f"run root (shared by every node): {cluster.run_root}",
        f"state: {cluster.dir / STATE}  (set -a; . {cluster.dir / STATE}; set +a)",
        f"logs: head {logs} (autoscaler: monitor.log), workers {cluster.dir}/nodes/*/logs",
        ("submit: RAY_AUTH_MODE=token ray job submit --address "
         f"{cluster.ray_address} --working-dir . -- python -m mixray.sweep sweeps/smoke.yaml "
         f"--set run_root={cluster.run_root} --set tracking.tracking_uri={cluster.tracking_uri}"),
    ])


# ---------------------------------------------------------------------------------------------
# down / status
# ---------------------------------------------------------------------------------------------

def stop_mlflow(pid: int, run_root: str) -> None:
    """The MLflow server by its PID -- if that PID is still an mlflow on this run root."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return
    if "mlflow" not in cmdline or run_root not in cmdline:
        log.warning("pid %d is no longer this cluster's MLflow server: left alone", pid)
        return
    _stop([pid], group=True)


def _stop(pids: list[int], group: bool = False) -> list[int]:
    """SIGTERM, wait up to STOP_GRACE_S, then SIGKILL; returns the PIDs that were signalled."""
    kill = os.killpg if group else os.kill
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if sig == signal.SIGKILL:
            log.warning("SIGKILL after %.0f s: %s", STOP_GRACE_S,
                        ", ".join(f"{p} ({_name(p)})" for p in pids if _alive(p)))
        for pid in pids:
            try:
                kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.5)
        if not any(_alive(p) for p in pids):
            break
    return pids


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()[-60:]
    except OSError:
        return "?"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def down(args: argparse.Namespace) -> int:
    cluster_dir = Path(args.cluster_dir).absolute()
    state_file = cluster_dir / STATE
    state = read_state(state_file) if state_file.exists() else {}
    if state.get("MIXRAY_CLUSTER_MLFLOW_PID"):
        stop_mlflow(int(state["MIXRAY_CLUSTER_MLFLOW_PID"]), state["MIXRAY_RUN_ROOT"])
    ours = {os.getpid(), os.getppid()}
    stopped = 0
    for _ in range(3):   # the autoscaler may be launching a node while we stop it
        pids = [p for p in pids_with_env(CLUSTER_ENV, str(cluster_dir)) if p not in ours]
        if not pids:
            break
        stopped += len(_stop(pids))
    left = [p for p in pids_with_env(CLUSTER_ENV, str(cluster_dir)) if p not in ours]
    state_file.unlink(missing_ok=True)
    if left:
        log.error("still running after down: %s", left)
        return 1
    log.info("stopped %d processes of %s (logs stay there until the next up)", stopped,
             cluster_dir)
    return 0


def status(args: argparse.Namespace) -> int:
    state_file = Path(args.cluster_dir).absolute() / STATE
    if not state_file.exists():
        print(f"no cluster up in {args.cluster_dir}")
        return 1
    state = read_state(state_file)
    print(state_file.read_text(), end="")
    env = os.environ | {"RAY_AUTH_MODE": "token"}
    argv = [str(VENV_BIN / "ray"), "status", f"--address={state['RAY_GCS_ADDRESS']}"]
    return subprocess.run(argv, check=False, env=env).returncode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clusters/local.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("up", "down", "status", "boot-delay"):
        s = sub.add_parser(name)
        s.add_argument("--cluster-dir", default="/tmp/mixray-local",
                       help="the cluster's own dir: Ray temp dirs, node disks, logs, state")
        if name == "up":
            s.add_argument("--config", default=str(TEMPLATE))
            s.add_argument("--run-root", default="runs/cluster",
                           help="shared by every node (the stand-in for EFS); not under /tmp")
            s.add_argument("--idle-minutes", type=float, default=None,
                           help="override idle_timeout_minutes")
            s.add_argument("--isolation", choices=["namespace", "none"], default="namespace")
            s.add_argument("--head-cpus", type=int, default=None, metavar="N",
                           help="CPUs of the head (local.yaml's: 0); a cloud head has some "
                                "(aws.yaml: 16), so trial functions start there at once and "
                                "their worker groups wait for trainer nodes")
            s.add_argument("--boot-delay", type=float, default=0.0, metavar="SECONDS",
                           help="each worker node sleeps this long before `ray start`, as a "
                                "cloud node boots (change it later: boot-delay)")
        if name == "boot-delay":
            s.add_argument("seconds", type=float,
                           help="the boot delay of the worker nodes launched from now on")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        return {"up": up, "down": down, "status": status,
                "boot-delay": boot_delay}[args.cmd](args)
    except (ValueError, RuntimeError, TimeoutError, subprocess.CalledProcessError) as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
