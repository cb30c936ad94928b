"""A Ray node provider for rehearsing a cluster on one machine: Ray's fake multi-node provider,
except that every worker node is a real `ray start` in its own mount namespace.

Ray's `fake_multinode` provider starts worker nodes inside the autoscaler's monitor process, so
they share the head's whole filesystem: a model built in the head's ``~/.cache`` or a file left in
its ``/tmp`` works on every "node", and a sweep that would fail on a real cluster passes. Here
each worker node runs as

    unshare --mount --propagation private -- bash -c \
        'mount --bind <node>/cache ~/.cache; mount -t tmpfs tmpfs /dev/shm;
         mount --bind <node>/tmp /tmp; exec ray start --address ... --block'

so it sees an empty ``~/.cache``, ``/dev/shm`` and ``/tmp`` of its own, like a fresh VM, and
shares only what a real cluster shares: the run root (the stand-in for EFS, which must lie outside
the private dirs), the code and venv (every real node has them), ``~/.ray/auth_token`` (copied
to every node by aws.yaml) and the network (one machine: every node has the same IP).

Why bind per-node directories and not tmpfs (what STACK.md measured): the node's files stay on
disk, not in RAM, and they outlive the node, so its Ray logs can be read after the autoscaler has
removed it, at ``<cluster_dir>/nodes/<node>/logs``. The sources live under the head's ``/tmp``
(``<cluster_dir>`` must be there), which the node's own ``/tmp`` hides: a node cannot see the
head's files or another node's.

Loaded by the autoscaler from ``provider.module`` (clusters/local.yaml); clusters/local.py puts
this directory on the head's PYTHONPATH.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

log = logging.getLogger(__name__)

SHM = "/dev/shm"
TMP = "/tmp"
# A node that ignores SIGTERM this long (Ray drains its workers first) is killed.
STOP_GRACE_S = 15.0
# Environment of the head's processes that must not reach a worker node's `ray start`.
HEAD_ONLY_ENV = ("RAY_FAKE_CLUSTER", "RAY_ADDRESS")
# The head's Ray --temp-dir, below the cluster dir (clusters/local.py starts it there).
HEAD_TEMP = "head"
# Every process of a local cluster carries CLUSTER_ENV=<cluster dir> in its environment (set on
# the head's `ray start` and inherited by everything below it, worker nodes included), and every
# process of a worker node NODE_ENV=<its temp dir>. Ray workers rewrite their command line
# (`ray::IDLE`), so the environment, not the command line, is how `down` finds them all.
CLUSTER_ENV = "MIXRAY_LOCAL_CLUSTER_DIR"
NODE_ENV = "MIXRAY_LOCAL_NODE"
# Seconds a worker node takes to "boot" before its `ray start`, read at each launch from this file
# in the cluster dir (written by `local.py up --boot-delay`, changed by `local.py boot-delay`), so
# one test can ask for cloud-slow nodes and the next for quick ones on the same cluster.
BOOT_DELAY_FILE = "boot-delay-s"
# On the head's PYTHONPATH only: its sitecustomize hides vLLM from the head's processes.
HEAD_SITE = "head_site"


@dataclass(frozen=True)
class Mount:
    """One mount in a node's namespace: ``source`` bound over ``target``, or a tmpfs if None.
    ``shared``: a head directory the node sees through its own copy of a private dir."""

    target: str
    source: str | None = None
    shared: bool = False


@dataclass(frozen=True)
class NodeDirs:
    """Where one worker node's files live, seen from the head (``root``) and from inside."""

    cluster_dir: Path
    name: str

    @property
    def root(self) -> Path:
        return self.cluster_dir / "nodes" / self.name

    @property
    def temp_dir(self) -> Path:
        """The node's Ray --temp-dir, inside its own /tmp (so its host path is below ``root``);
        named after the cluster dir like the head's, so that `ps` output tells nodes apart."""
        return self.cluster_dir / self.name

    def logs(self, session: str) -> Path:
        """The node's Ray logs as the head sees them (below the node's /tmp). Not via the node's
        `session_latest`: that link is absolute, so it only resolves inside the node."""
        return self.root / "tmp" / self.temp_dir.relative_to(TMP) / session / "logs"


def private_mounts(private_dirs: list[str], node_root: Path,
                   shared_dirs: list[str] = ()) -> list[Mount]:
    """The mounts that give a node its own copy of each of ``private_dirs``, in an order that
    works: every bind source lies under the head's /tmp, so /tmp is replaced last; /dev/shm gets a
    tmpfs (shared memory belongs in RAM); a dir below another private dir needs nothing.

    ``shared_dirs`` that lie below a private dir (a checkout and its venv under /tmp: every real
    node has the code and the venv) are bound into the node's copy of it first, at the same path;
    the copies are bound recursively (namespace_command), so the node sees them where the head
    does and nothing else of the head's dir."""
    dirs = sorted({_norm(d) for d in private_dirs})
    dirs = [d for d in dirs if not any(_is_below(d, other) for other in dirs if other != d)]
    mounts = []
    for shared in sorted({_norm(d) for d in shared_dirs}):
        owner = next((d for d in dirs if d != SHM and _is_below(shared, d)), None)
        if owner is not None:
            copy = _copy_of(owner, node_root) / os.path.relpath(shared, owner)
            mounts.append(Mount(str(copy), shared, shared=True))
    for d in dirs:
        if d == SHM:
            mounts.append(Mount(d))
        elif d != TMP:
            mounts.append(Mount(d, str(_copy_of(d, node_root))))
    if TMP in dirs:
        mounts.append(Mount(TMP, str(_copy_of(TMP, node_root))))
    return mounts


def _norm(path: str) -> str:
    return os.path.normpath(os.path.expanduser(path))


def _copy_of(private_dir: str, node_root: Path) -> Path:
    """Where the node's own copy of ``private_dir`` lives on the head's disk."""
    return node_root / ("tmp" if private_dir == TMP else _slug(private_dir))


def namespace_command(mounts: list[Mount], argv: list[str], *, as_root: bool,
                      delay_s: float = 0.0) -> list[str]:
    """``argv`` in a new mount namespace with ``mounts`` applied first, ``delay_s`` after them
    (the node's boot). As root a plain mount namespace; otherwise an unprivileged user namespace
    that maps us to root inside it (mount(8) refuses a non-root caller), which kernels may forbid
    (Ubuntu 24.04's AppArmor does)."""
    lines = ["set -e"]
    for m in mounts:
        q = shlex.quote(m.target)
        lines.append(f"mkdir -p {q}")
        if m.source is None:
            lines.append(f"mount -t tmpfs -o mode=1777 tmpfs {q}")
        else:   # recursive: a shared dir bound into a private copy comes along with it
            lines.append(f"mount --rbind {shlex.quote(m.source)} {q}")
    if delay_s:
        lines.append(f"sleep {delay_s:g}")
    lines.append("exec " + shlex.join(argv))
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if not as_root:
        unshare.insert(1, "--map-root-user")
    return [*unshare, "--", "bash", "-c", "\n".join(lines)]


def ray_start_argv(ray_bin: str, gcs_address: str, dirs: NodeDirs, resources: dict[str, float],
                   labels: dict[str, str], object_store_memory: int | None,
                   agent_port: int) -> list[str]:
    """`ray start` for one worker node, blocking (the process is the node: it dies with it)."""
    res = dict(resources)
    argv = [ray_bin, "start", f"--address={gcs_address}", f"--temp-dir={dirs.temp_dir}",
            f"--num-cpus={res.pop('CPU', 0)}",
            f"--num-gpus={res.pop('GPU', 0)}", f"--resources={json.dumps(res)}",
            # Several nodes on one machine: random worker ports and an agent port of its own
            # (the default 52365 clashes: "No available agent to submit job", STACK.md).
            "--min-worker-port=0", "--max-worker-port=0",
            f"--dashboard-agent-listen-port={agent_port}", "--disable-usage-stats", "--block"]
    if object_store_memory:
        argv.append(f"--object-store-memory={int(object_store_memory)}")
    if labels:
        argv.append("--labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
    return argv


def node_env(base: dict[str, str], node_id: str, node_type: str, dirs: NodeDirs,
             gcs_address: str) -> dict[str, str]:
    """The environment of a worker node's `ray start`: the head's minus what is the head's own,
    plus the fake provider's identity variables (the autoscaler matches nodes by this node id)
    and this cluster's GCS as RAY_ADDRESS: a process of the node that joins Ray on its own
    (Ray Train's PlacementGroupCleaner) would otherwise find every cluster on this machine and
    refuse to choose ("Found multiple active Ray instances"); a cloud VM has one."""
    env = {k: v for k, v in base.items() if k not in HEAD_ONLY_ENV}
    env["RAY_ADDRESS"] = gcs_address
    here = Path(__file__).resolve().parent
    head_only = {str(here), str(here / HEAD_SITE)}
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in head_only]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update({"RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id, "RAY_CLOUD_INSTANCE_ID": node_id,
                "RAY_NODE_TYPE_NAME": node_type, "RAY_AUTH_MODE": "token",
                NODE_ENV: str(dirs.temp_dir)})
    return env


class NamespacedNodeProvider(FakeMultiNodeProvider):
    """FakeMultiNodeProvider whose worker nodes are `ray start` processes, each in its own mount
    namespace (``provider.isolation: namespace``) or sharing the head's (``none``)."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        head_type = provider_config.get("head_node_type")
        if head_type:
            self._nodes[self._head_node_id]["tags"][TAG_RAY_USER_NODE_TYPE] = head_type
        self._cluster_dir = Path(provider_config["cluster_dir"])
        self._private = list(provider_config.get("private_dirs", []))
        self._shared = list(provider_config.get("shared_dirs", []))
        self._isolate = provider_config.get("isolation", "namespace") == "namespace"
        self._ray = str(Path(sys.executable).parent / "ray")
        log.info("local provider: cluster dir %s, isolation %s, private dirs %s",
                 self._cluster_dir, "namespace" if self._isolate else "none", self._private)

    def _create_node_with_resources_and_labels(self, node_config: dict[str, Any],
                                               tags: dict[str, str], count: int,
                                               resources: dict[str, float],
                                               labels: dict[str, str]) -> None:
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            dirs = NodeDirs(self._cluster_dir, f"{node_type}-{self._next_node_id:02d}")
            delay = boot_delay_s(self._cluster_dir)
            proc = self._launch(node_id, node_type, dirs, node_config, resources, labels, delay)
            all_tags = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: node_type,
                        TAG_RAY_NODE_NAME: dirs.name, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE}
            all_tags.update(tags)
            self._nodes[node_id] = {"tags": all_tags, "process": proc, "dirs": dirs}

    def _launch(self, node_id: str, node_type: str, dirs: NodeDirs, node_config: dict[str, Any],
                resources: dict[str, float], labels: dict[str, str],
                delay_s: float) -> subprocess.Popen:
        mounts = (private_mounts(self._private, dirs.root, self._shared) if self._isolate
                  else [])
        for m in mounts:
            if m.source and not m.shared:
                Path(m.source).mkdir(parents=True, exist_ok=True)
                os.chmod(m.source, 0o1777 if m.target == TMP else 0o755)
        dirs.root.mkdir(parents=True, exist_ok=True)
        # Every node of a cluster names its session dir after the head's session.
        session = (self._cluster_dir / HEAD_TEMP / "session_latest").resolve().name
        _link(dirs.root / "logs", dirs.logs(session))
        argv = ray_start_argv(self._ray, self._gcs_address, dirs, resources, labels,
                              node_config.get("object_store_memory"), free_ports(1)[0])
        if self._isolate:
            argv = namespace_command(mounts, argv, as_root=os.geteuid() == 0, delay_s=delay_s)
        elif delay_s:
            argv = ["bash", "-c", f"sleep {delay_s:g}; exec \"$@\"", "boot", *argv]
        with open(dirs.root / "ray-start.log", "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=node_env(dict(os.environ), node_id, node_type, dirs,
                                                 self._gcs_address),
                                    start_new_session=True)
        log.info("launched %s node %s (pid %d, node id %s, boots in %g s): logs %s", node_type,
                 dirs.name, proc.pid, node_id, delay_s, dirs.root / "logs")
        return proc

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        """As Ray's, but a node whose `ray start` has exited is gone, as a crashed VM would be."""
        with self.lock:
            for node_id, node in list(self._nodes.items()):
                proc = node.get("process")
                if proc is not None and proc.poll() is not None:
                    log.error("node %s exited with %s; see %s", node["dirs"].name,
                              proc.returncode, node["dirs"].root / "ray-start.log")
                    del self._nodes[node_id]
        return super().non_terminated_nodes(tag_filters)

    def _terminate_node(self, node: dict[str, Any]) -> None:
        """SIGTERM the node's process group now; escalate in the background, so the autoscaler's
        loop is not held up while Ray drains the node."""
        log.info("terminating node %s", node["dirs"].name)
        _signal_group(node["process"], signal.SIGTERM)
        threading.Thread(target=_reap, args=(node["process"], node["dirs"]), daemon=True).start()


def _reap(proc: subprocess.Popen, dirs: NodeDirs) -> None:
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("node %s ignored SIGTERM for %.0f s: killing it", dirs.name, STOP_GRACE_S)
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    # Processes that left the group (none expected) still carry the node's marker.
    time.sleep(1.0)
    for pid in pids_with_env(NODE_ENV, str(dirs.temp_dir)):
        log.warning("killing leftover pid %d of node %s", pid, dirs.name)
        _kill(pid, signal.SIGKILL)


def boot_delay_s(cluster_dir: Path) -> float:
    """The cluster's current boot delay (0 when the file is absent)."""
    path = cluster_dir / BOOT_DELAY_FILE
    return float(path.read_text()) if path.exists() else 0.0


def pids_with_env(key: str, value: str) -> list[int]:
    """PIDs (not ours) whose environment holds ``key=value`` (readable as root or their user)."""
    wanted = f"{key}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ:
            pids.append(int(entry.name))
    return pids


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _is_below(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _slug(path: str) -> str:
    """``/root/.cache`` -> ``root-.cache``: one directory per private dir in the node's root."""
    return path.strip("/").replace("/", "-") or "root"


def _link(link: Path, target: Path) -> None:
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(target, link.parent))


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1, below the kernel's ephemeral range. A port that
    bind(0) handed out and we released goes back into that range, where the next bind(0) of
    any process can take it before Ray binds it: the head's runtime-env agent once took the
    dashboard agent's port that way, and cluster-up failed. Below the range no bind(0) lands."""
    low = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.exists() else 32768
    candidates = random.Random().sample(range(LOWEST_PORT, max(low, LOWEST_PORT + 10 * n)),
                                        10 * n)
    ports: list[int] = []
    with ExitStack() as stack:   # held together while chosen, so never the same one twice
        for port in candidates:
            s = stack.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue   # in use
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free ports among {len(candidates)} tried below {low}")
