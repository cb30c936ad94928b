"""The rehearsal cluster (clusters/local.yaml, local.py, local_provider.py) without starting Ray:
the node types mirror aws.yaml's, the config is one Ray's autoscaler accepts as read, the head
binds 127.0.0.1 on ports of its own, and a worker node's namespace hides ~/.cache, /dev/shm and
/tmp but never the run root.

The cluster itself is checked by hand (clusters/README.md, "Rehearse on a laptop").
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
STANDARD = {"CPU", "GPU", "memory", "object_store_memory"}
RUN_ROOT = Path("/work/main/runs/cluster")


def _load_cli():
    """clusters/local.py by path (clusters/ is no package); it puts clusters/ on sys.path."""
    spec = importlib.util.spec_from_file_location("clusters_local", CLUSTERS / "local.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


local = _load_cli()
import local_provider


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTERS / name).read_text())


def cluster(tmp_dir: str = "/tmp/mixray-t") -> Any:
    return local.Cluster(Path(tmp_dir), RUN_ROOT, local.Ports(6400, 8300, 52400, 10400, 5400))


def custom_resources(cfg: dict[str, Any]) -> set[frozenset[str]]:
    return {frozenset(set(t["resources"]) - STANDARD - {"gpu_memory_gib"})  # the memory preview's
            for k, t in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


# ---------------------------------------------------------------------------------------------
# clusters/local.yaml
# ---------------------------------------------------------------------------------------------

def test_node_types_mirror_aws():
    cfg, aws = load("local.yaml"), load("aws.yaml")
    types = cfg["available_node_types"]
    assert set(types) == {"head", "teacher", "trainer"} and cfg["head_node_type"] == "head"
    assert types["head"]["resources"].get("CPU") == 0, "no teacher or training work on the head"
    assert "GPU" not in types["head"]["resources"]
    assert custom_resources(cfg) == custom_resources(aws) == {
        frozenset({"teacher_node"}), frozenset({"trainer_node"})}
    assert "teacher_node" in types["teacher"]["resources"]
    assert "trainer_node" in types["trainer"]["resources"]
    for name in ("teacher", "trainer"):
        assert types[name]["min_workers"] == 0, f"{name}: must scale from 0"
        assert types[name]["resources"]["CPU"] > 0
    assert sum(types[n]["max_workers"] for n in ("teacher", "trainer")) <= cfg["max_workers"]
    assert 0 < cfg["idle_timeout_minutes"] <= aws["idle_timeout_minutes"]


def test_provider_is_the_namespaced_fake_provider():
    provider = load("local.yaml")["provider"]
    assert provider["type"] == "external"
    module, cls = provider["module"].rsplit(".", 1)
    assert getattr(importlib.import_module(module), cls) is local_provider.NamespacedNodeProvider
    for key in ("use_node_id_as_ip", "disable_node_updaters", "disable_launch_config_check"):
        assert provider[key] is True, key
    assert provider["isolation"] == "namespace"
    assert {"~/.cache", "/tmp"} <= set(provider["private_dirs"])


def test_rendered_config_is_what_the_autoscaler_accepts():
    """The monitor reads the file raw (no defaults merged) and validates it at every reset."""
    from ray.autoscaler._private.util import validate_config

    cfg = local.render_config(load("local.yaml"), cluster(), ["~/.cache", "/tmp"], 1)
    validate_config(cfg)
    for key in ("file_mounts", "cluster_synced_files", "worker_setup_commands",
                "worker_start_ray_commands", "max_workers", "available_node_types"):
        assert key in cfg, f"the autoscaler reads {key} without a default"
    p = cfg["provider"]
    assert p["gcs_address"] == "127.0.0.1:6400" and p["cluster_dir"] == "/tmp/mixray-t"
    assert p["private_dirs"] == ["~/.cache", "/tmp"] and cfg["idle_timeout_minutes"] == 1
    assert load("local.yaml")["idle_timeout_minutes"] != 1, "render_config changed the template"


# ---------------------------------------------------------------------------------------------
# the head: its own ports, loopback only
# ---------------------------------------------------------------------------------------------

def test_head_command_has_its_own_ports_and_binds_loopback():
    c = cluster()
    cfg = load("local.yaml")
    argv = local.head_command(c, cfg, Path("/tmp/mixray-t/autoscaling.yaml"))
    for flag in ("--port=6400", "--dashboard-port=8300", "--dashboard-agent-listen-port=52400",
                 "--ray-client-server-port=10400", "--temp-dir=/tmp/mixray-t/head",
                 "--dashboard-host=127.0.0.1", "--num-cpus=0",
                 "--autoscaling-config=/tmp/mixray-t/autoscaling.yaml"):
        assert flag in argv, flag
    assert "0.0.0.0" not in " ".join(argv)
    mlflow = local.mlflow_command(c)
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1"
    assert f"sqlite:///{RUN_ROOT}/mlflow.db" in mlflow and str(RUN_ROOT / "mlartifacts") in mlflow
    env = local.head_env({"PATH": "/usr/bin", "RAY_ADDRESS": "x"}, c)
    assert env["RAY_FAKE_CLUSTER"] == "1" and env["RAY_AUTH_MODE"] == "token"
    assert "RAY_ADDRESS" not in env and env["PYTHONPATH"].split(os.pathsep)[0] == str(CLUSTERS)
    assert env[local_provider.CLUSTER_ENV] == "/tmp/mixray-t"


def test_state_file_round_trips_and_is_sourceable(tmp_path):
    path = tmp_path / "cluster.env"
    path.write_text("\n".join(local.state_lines(cluster(), 4242)) + "\n")
    state = local.read_state(path)
    assert state["RAY_ADDRESS"] == "http://127.0.0.1:8300"
    assert state["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5400"
    assert state["RAY_AUTH_MODE"] == "token" and state["MIXRAY_CLUSTER_MLFLOW_PID"] == "4242"
    script = f"set -a; . {shlex.quote(str(path))}; echo $RAY_GCS_ADDRESS"
    shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert shell.stdout.strip() == "127.0.0.1:6400"


# ---------------------------------------------------------------------------------------------
# isolation: what a worker node sees
# ---------------------------------------------------------------------------------------------

def test_mounts_hide_cache_shm_and_tmp_and_replace_tmp_last():
    root = Path("/tmp/mixray-t/nodes/teacher-01")
    home = os.path.expanduser("~")
    mounts = local_provider.private_mounts(["~/.cache", "/dev/shm", "/tmp"], root)
    assert [m.target for m in mounts] == ["/dev/shm", f"{home}/.cache", "/tmp"]
    assert mounts[0].source is None, "/dev/shm is a tmpfs"
    assert all(Path(m.source).is_relative_to(root) for m in mounts if m.source)
    assert mounts[-1] == local_provider.Mount("/tmp", str(root / "tmp"))
    nested = local_provider.private_mounts(["~/.cache", "~/.cache/mixray", "/tmp/x", "/tmp"],
                                           root)
    assert [m.target for m in nested] == [f"{home}/.cache", "/tmp"]


def test_a_checkout_under_tmp_is_bound_into_the_nodes_tmp_at_its_own_path():
    """A new user's clone under /tmp: the node's /tmp is its own, but the code and the venv are
    bound into it first (as every real node has them), and /tmp comes along recursively."""
    root = Path("/tmp/mixray-t/nodes/teacher-01")
    mounts = local_provider.private_mounts(["~/.cache", "/dev/shm", "/tmp"], root,
                                           ["/tmp/clone", "/tmp/clone/.venv", "/work/venv"])
    shared = [m for m in mounts if m.shared]
    assert shared == [local_provider.Mount(str(root / "tmp" / "clone"), "/tmp/clone", True),
                      local_provider.Mount(str(root / "tmp" / "clone" / ".venv"),
                                           "/tmp/clone/.venv", True)], "/work/venv: not private"
    assert mounts[: len(shared)] == shared, "bound into the copy before the copy replaces /tmp"
    assert mounts[-1] == local_provider.Mount("/tmp", str(root / "tmp"))
    script = local_provider.namespace_command(mounts, ["true"], as_root=True)[-1]
    assert f"mount --rbind /tmp/clone {root / 'tmp' / 'clone'}" in script
    assert f"mount --rbind {root / 'tmp'} /tmp" in script


def test_boot_delay_sleeps_inside_the_namespace_before_ray_starts():
    mounts = local_provider.private_mounts(["/tmp"], Path("/tmp/mixray-t/nodes/trainer-01"))
    script = local_provider.namespace_command(mounts, ["ray", "start"], as_root=True,
                                              delay_s=90)[-1].splitlines()
    assert script[-2:] == ["sleep 90", "exec ray start"]
    quick = local_provider.namespace_command(mounts, ["ray", "start"], as_root=True)[-1]
    assert "sleep" not in quick


def test_the_boot_delay_file_is_read_at_each_launch(tmp_path):
    assert local_provider.boot_delay_s(tmp_path) == 0.0
    local.set_boot_delay(tmp_path, 75)
    assert local_provider.boot_delay_s(tmp_path) == 75.0
    local.set_boot_delay(tmp_path, 0)
    assert local_provider.boot_delay_s(tmp_path) == 0.0
    with pytest.raises(ValueError, match="must be 0 or more"):
        local.set_boot_delay(tmp_path, -1)


def test_the_heads_python_has_no_vllm_and_the_nodes_do(tmp_path):
    """head_site/sitecustomize.py on the head's PYTHONPATH hides vLLM (as a cloud head lacks
    it); a worker node's environment drops it again."""
    site = CLUSTERS / local_provider.HEAD_SITE
    probe = ("import importlib.util, sys; print(importlib.util.find_spec('json') is not None, "
             "importlib.util.find_spec('vllm') is None)")
    env = os.environ | {"PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "True"]
    failed = subprocess.run([sys.executable, "-c", "import vllm"], env=env, capture_output=True,
                            text=True, check=False)
    assert failed.returncode == 1 and "ModuleNotFoundError" in failed.stderr
    dirs = local_provider.NodeDirs(Path("/tmp/mixray-t"), "teacher-01")
    cluster = local.Cluster(Path("/tmp/mixray-t"), RUN_ROOT, local.Ports(*range(5)))
    head = local.head_env({"PYTHONPATH": "/opt/lib"}, cluster)
    assert str(site) in head["PYTHONPATH"].split(os.pathsep)
    node = local_provider.node_env(head, "f" * 56, "teacher", dirs, "127.0.0.1:6380")
    assert node["PYTHONPATH"] == "/opt/lib"


def test_namespace_command_mounts_over_private_dirs_but_not_the_run_root():
    root = Path("/tmp/mixray-t/nodes/trainer-02")
    dirs = local_provider.NodeDirs(Path("/tmp/mixray-t"), "trainer-02")
    mounts = local_provider.private_mounts(["~/.cache", "/dev/shm", "/tmp", "/srv/models"], root)
    start = local_provider.ray_start_argv("/venv/bin/ray", "127.0.0.1:6400", dirs,
                                          {"CPU": 2, "trainer_node": 1}, {}, 2**29, 52401)
    argv = local_provider.namespace_command(mounts, start, as_root=True)
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    script = argv[-1].splitlines()
    targets = [shlex.split(line)[-1] for line in script if line.startswith("mount ")]
    assert targets == ["/dev/shm", os.path.expanduser("~/.cache"), "/srv/models", "/tmp"]
    for t in targets:
        assert not RUN_ROOT.is_relative_to(t), f"{t} would hide the run root"
    assert script[-1] == "exec " + shlex.join(start)
    assert f"--temp-dir={dirs.temp_dir}" in start and "--block" in start
    assert '--resources={"trainer_node": 1}' in start and "--num-cpus=2" in start
    assert "--dashboard-agent-listen-port=52401" in start
    assert dirs.logs("session_x").is_relative_to(root / "tmp")
    user = local_provider.namespace_command(mounts, start, as_root=False)
    assert "--map-root-user" in user[: user.index("--")]


def test_check_paths_keeps_the_run_root_shared():
    private = local.private_dirs(load("local.yaml"), {"MIXRAY_CACHE": "/srv/cache"})
    assert "/srv/cache" in private
    ok = Path("/tmp/mixray-t")
    local.check_paths(ok, RUN_ROOT, private)
    for bad_root in ("/tmp/runs", os.path.expanduser("~/.cache/runs"), "/srv/cache/runs"):
        with pytest.raises(ValueError, match="worker nodes do not see"):
            local.check_paths(ok, Path(bad_root), private)
    with pytest.raises(ValueError, match="must be /tmp/<name>"):
        local.check_paths(Path("/work/cluster"), RUN_ROOT, private)
    with pytest.raises(ValueError, match="longer than"):
        local.check_paths(Path("/tmp/" + "x" * 40), RUN_ROOT, private)


def test_node_env_is_the_nodes_own():
    dirs = local_provider.NodeDirs(Path("/tmp/mixray-t"), "teacher-01")
    base = {"PATH": "/usr/bin", "RAY_FAKE_CLUSTER": "1", "RAY_ADDRESS": "127.0.0.1:1",
            "PYTHONPATH": os.pathsep.join([str(CLUSTERS), "/opt/lib"]),
            local_provider.CLUSTER_ENV: "/tmp/mixray-t"}
    env = local_provider.node_env(base, "f" * 56, "teacher", dirs, "127.0.0.1:6380")
    assert "RAY_FAKE_CLUSTER" not in env
    assert env["RAY_ADDRESS"] == "127.0.0.1:6380", "this cluster's GCS, not the caller's"
    assert env["PYTHONPATH"] == "/opt/lib"
    assert env["RAY_OVERRIDE_NODE_ID_FOR_TESTING"] == env["RAY_CLOUD_INSTANCE_ID"] == "f" * 56
    assert env["RAY_NODE_TYPE_NAME"] == "teacher" and env["RAY_AUTH_MODE"] == "token"
    assert env[local_provider.CLUSTER_ENV] == "/tmp/mixray-t", "down must find the node too"
    assert env[local_provider.NODE_ENV] == str(dirs.temp_dir)


def test_pids_with_env_finds_exactly_the_marked_processes():
    marker = f"/tmp/mixray-test-{os.getpid()}"
    env = os.environ | {local_provider.CLUSTER_ENV: marker}
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = local_provider.pids_with_env(local_provider.CLUSTER_ENV, marker)
        assert found == [marked.pid]
    finally:
        for p in (marked, other):
            p.send_signal(signal.SIGKILL)
            p.wait()


def test_the_local_cluster_reports_its_node_types_as_rays_cluster_config() -> None:
    """What `make cluster-up` reports to the GCS, read back by Ray's own reader."""
    from ray._private.state import GlobalState
    from ray.core.generated import autoscaler_pb2

    cfg = yaml.safe_load((CLUSTERS / "local.yaml").read_text())
    record = autoscaler_pb2.ClusterConfig.FromString(local.node_groups(cfg))
    groups = {g.name: g for g in record.node_group_configs}
    assert (groups["trainer"].max_count, dict(groups["trainer"].resources)) == (
        2, {"CPU": 2, "trainer_node": 1})
    reader = GlobalState._calculate_max_resource_from_cluster_config
    assert reader(record, "CPU") == 2 * 1 + 2 * 2 and reader(record, "teacher_node") == 1


def test_ports_are_chosen_where_no_other_process_is_handed_one() -> None:
    """Below the ephemeral range, which every bind(0) draws from: a port chosen and released
    here cannot be handed to another process before Ray binds it."""
    low = int(local_provider.EPHEMERAL_RANGE.read_text().split()[0])
    import socket

    with socket.socket() as s:   # a port the kernel hands out: never one of ours
        s.bind(("127.0.0.1", 0))
        ephemeral = s.getsockname()[1]
    ports = local_provider.free_ports(6)
    assert len(set(ports)) == 6 and all(local_provider.LOWEST_PORT <= p < low for p in ports)
    assert ephemeral >= low and ephemeral not in ports
    for p in ports:   # free: each binds
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
