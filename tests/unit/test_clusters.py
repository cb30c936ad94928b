"""The cluster configs in clusters/: Ray's own launcher validation, the KubeRay manifest's shape,
and that nothing is open to the internet or turns Ray's token authentication off.

No cloud credentials, no network and no Ray cluster: the launcher check runs what `ray up` runs
before it talks to the cloud (`prepare_config` then `validate_config`, i.e. the defaults merge and
the JSON schema `ray/autoscaler/ray-schema.json`).
"""

from __future__ import annotations

import copy
import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"

LAUNCHER = ["aws.yaml", "gcp.yaml"]            # `ray up` configs
KUBERAY = "kuberay.yaml"                       # Kubernetes manifests (multi-document)
OTHER = ["aws-network.yaml"]                   # CloudFormation for aws.yaml's security group / EFS
LOCAL = ["local.yaml"]                         # rehearsal cluster: test_local_cluster.py
ADMIN_PLACEHOLDER = ipaddress.ip_network("203.0.113.0/24")   # RFC 5737 documentation range


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTERS / name).read_text())


def load_all(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTERS / name).read_text()) if d is not None]


def all_yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTERS.iterdir() if p.suffix in {".yaml", ".yml"})


def test_every_yaml_is_known():
    """A new file must be added to one of the lists above, so it gets checked."""
    assert sorted(p.name for p in all_yaml_files()) == sorted(LAUNCHER + [KUBERAY] + OTHER + LOCAL)


# ---------------------------------------------------------------------------------------------
# (a) Ray's own cluster-config validation
# ---------------------------------------------------------------------------------------------

def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before contacting the cloud (commands._bootstrap_config): merge the
    provider's defaults.yaml, merge setup commands, check docker and fill min/max workers
    (`prepare_config`), then `validate_config` (jsonschema against ray-schema.json, head type,
    sum of min_workers vs max_workers). Returns the prepared config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_ray_validation(name):
    raw = load(name)
    prepared = ray_validate(raw)
    # Our settings survive the defaults merge (a top-level key we forgot would be Ray's default).
    for key in ("head_start_ray_commands", "worker_start_ray_commands", "head_setup_commands",
                "worker_setup_commands", "setup_commands", "file_mounts", "available_node_types"):
        assert key in raw, f"{name}: {key} falls back to Ray's defaults"
    assert prepared["available_node_types"].keys() == raw["available_node_types"].keys()


def _broken_copies(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    worker = next(k for k in config["available_node_types"] if k != config["head_node_type"])

    c = copy.deepcopy(config)
    c["max_worker"] = 3                                  # typo of a top-level key
    yield "unknown top-level key", c

    c = copy.deepcopy(config)
    c["available_node_types"][worker]["min_workers"] = "0"
    yield "min_workers is a string", c

    c = copy.deepcopy(config)
    c["available_node_types"][worker]["resources"]["GPU"] = 0.5
    yield "fractional GPU resource on a node type", c

    c = copy.deepcopy(config)
    del c["available_node_types"][worker]["node_config"]
    yield "node type without node_config", c

    c = copy.deepcopy(config)
    c["head_node_type"] = "no_such_type"
    yield "head_node_type not among available_node_types", c

    c = copy.deepcopy(config)
    c["available_node_types"][worker]["min_workers"] = c["max_workers"] + 1
    yield "min_workers above the global max_workers", c

    c = copy.deepcopy(config)
    c["setup_commands"] = [["pip", "install", "-e", "."]]
    yield "a setup command that is not a string", c


@pytest.mark.parametrize("name", LAUNCHER)
def test_ray_validation_rejects_broken_copies(name):
    import jsonschema

    config = load(name)
    for what, broken in _broken_copies(config):
        with pytest.raises((jsonschema.ValidationError, ValueError)):
            ray_validate(broken)
            pytest.fail(f"{name}: Ray accepted a broken copy ({what})")


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_node_types_fit_the_work(name):
    cfg = load(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head should be a CPU node"
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers, "no worker node types"
    for key, node in workers.items():
        assert node.get("min_workers", 0) == 0, f"{key}: GPU workers must scale from 0"
        assert node["max_workers"] in range(1, cfg["max_workers"] + 1), key
    teacher = [v for v in workers.values() if "teacher_node" in v["resources"]]
    trainer = [v for v in workers.values() if "trainer_node" in v["resources"]]
    assert teacher and teacher[0]["resources"]["GPU"] >= 8, "teachers need 8 GPUs (TP for 32B-72B)"
    assert trainer and trainer[0]["resources"]["GPU"] >= 4, "students train on 4-8 GPUs"
    assert cfg["idle_timeout_minutes"] in range(1, 61), cfg["idle_timeout_minutes"]
    assert sum(v["max_workers"] for v in workers.values()) <= cfg["max_workers"]
    # Ray replaces (not extends) setup_commands + worker_setup_commands with a node type's own list.
    assert not any("worker_setup_commands" in v for v in workers.values())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_installs_mixray_and_keeps_token_auth(name):
    """Each role's install is clusters/setup-node.sh's (one source for the three cluster files):
    GPU workers get vLLM, the CPU head does not."""
    cfg = load(name)
    assert [c for c in cfg["worker_setup_commands"] if "setup-node.sh" in c] == [
        "bash ~/mixray/clusters/setup-node.sh gpu-worker"]
    assert [c for c in cfg["head_setup_commands"] if "setup-node.sh" in c] == [
        "bash ~/mixray/clusters/setup-node.sh head"]
    assert not any("pip install" in c and "mixray" in c
                   for c in cfg["worker_setup_commands"] + cfg["head_setup_commands"])
    assert cfg["file_mounts"]["~/mixray"] == "."
    assert ".gitignore" in cfg["rsync_filter"], "the upload would include .venv and runs/"
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)


def test_aws_nodes_bring_their_own_security_group():
    """Ray's AWS bootstrap creates a security group for node types without SecurityGroupIds and
    always adds SSH from 0.0.0.0/0 to it (aws/config.py: _create_default_ssh_inbound_rules)."""
    cfg = load("aws.yaml")
    for key, node in cfg["available_node_types"].items():
        sgs = node["node_config"].get("SecurityGroupIds")
        assert sgs, f"{key}: Ray would create a group with SSH open to the world"
        assert node["node_config"].get("SubnetIds"), key
        assert node["node_config"].get("ImageId"), f"{key}: Ray's default AMI is Ubuntu 18.04"


def test_gcp_nodes_use_the_dedicated_network():
    """Without networkInterfaces Ray picks the project's first subnetwork (often `default`, whose
    default-allow-ssh rule is world-open); our firewall rules target the `mixray` tag."""
    cfg = load("gcp.yaml")
    for key, node in cfg["available_node_types"].items():
        nics = node["node_config"].get("networkInterfaces")
        assert nics and all("/subnetworks/mixray-subnet" in n["subnetwork"] for n in nics), key
        assert "mixray" in node["node_config"]["tags"]["items"], key
        if node["resources"].get("GPU"):
            assert node["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE", key


# ---------------------------------------------------------------------------------------------
# (b) the KubeRay manifest
# ---------------------------------------------------------------------------------------------

def kuberay_docs() -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in load_all(KUBERAY):
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_kuberay_rayjob_structure():
    docs = kuberay_docs()
    (job,) = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "mixray.sweep"] and entry[3].endswith(".yaml")
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["enableInTreeAutoscaling"] is True

    head = cluster["headGroupSpec"]
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers[0]["image"] and head_containers[0]["name"] == "ray-head"
    assert "nvidia.com/gpu" not in head_containers[0]["resources"].get("limits", {})

    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert len(groups) >= 2
    gpus = {}
    for name, g in groups.items():
        assert g["minReplicas"] == 0 and g["replicas"] == 0, f"{name}: should scale from 0"
        assert g["maxReplicas"] >= 1
        (c,) = g["template"]["spec"]["containers"]
        assert c["image"] == head_containers[0]["image"], "one image for head and workers"
        limits = c["resources"]["limits"]
        gpus[name] = int(limits["nvidia.com/gpu"])
        assert int(c["resources"]["requests"]["nvidia.com/gpu"]) == gpus[name]
        assert "memory" in limits and "cpu" in limits
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/mnt/mixray" in mounts and "/dev/shm" in mounts
    assert max(gpus.values()) >= 8 and min(gpus.values()) >= 4

    # run_root and tracking point at the shared volume and the in-cluster MLflow Service.
    assert "run_root=/mnt/mixray" in spec["entrypoint"]
    (svc,) = [s for s in docs["Service"] if s["metadata"]["name"] == "mixray-head"]
    assert f"http://{svc['metadata']['name']}:5000" in spec["entrypoint"]
    head_labels = head["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= head_labels.items()
    (pvc,) = docs["PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


# ---------------------------------------------------------------------------------------------
# (c) ingress: nothing open to the world, token auth never disabled
# ---------------------------------------------------------------------------------------------

EGRESS = re.compile(r"egress", re.I)
AUTH_DISABLED = re.compile(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?disabled", re.I)
OPEN_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path or "<document>", node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _world_open(value: str) -> bool:
    for token in re.split(r"[\s,;'\"=]+", value):
        if "/" not in token:
            continue
        try:
            if ipaddress.ip_network(token, strict=False).prefixlen == 0:
                return True
        except ValueError:
            continue
    return False


def ingress_violations(doc: Any) -> list[str]:
    """World-open ingress in any shape: AWS IpPermissions/IpRanges/CidrIp (launcher
    provider.security_group or CloudFormation, parameter defaults included), GCP firewall
    sourceRanges, Kubernetes loadBalancerSourceRanges...: any CIDR with prefix length 0 outside an
    egress rule. Plus Kubernetes exposure of the head: Service/serviceType LoadBalancer or NodePort,
    Ingress objects, hostPort, hostNetwork. Plus RAY_AUTH_MODE=disabled in any form."""
    out = []
    for path, value in _walk(doc):
        if isinstance(value, str):
            if _world_open(value) and not EGRESS.search(path):
                out.append(f"{path}: world-open {value!r}")
            if AUTH_DISABLED.search(value):
                out.append(f"{path}: token auth disabled")
        elif isinstance(value, dict):
            if value.get("kind") == "Ingress":
                out.append(f"{path}: Kubernetes Ingress exposes the cluster")
            service_type = value.get("spec", {}).get("type")
            if value.get("kind") == "Service" and service_type in OPEN_SERVICE_TYPES:
                out.append(f"{path}: Service of type {service_type}")
            if value.get("serviceType") in OPEN_SERVICE_TYPES:
                out.append(f"{path}.serviceType: {value['serviceType']}")
            if "hostPort" in value:
                out.append(f"{path}.hostPort: exposed on the node's address")
            if value.get("hostNetwork") is True:
                out.append(f"{path}.hostNetwork: true")
            env_off = str(value.get("value")).lower() == "disabled"
            if value.get("name") == "RAY_AUTH_MODE" and env_off:
                out.append(f"{path}: RAY_AUTH_MODE env var set to disabled")
            if path.endswith("authOptions") and value.get("mode") == "disabled":
                out.append(f"{path}.mode: disabled")
    return out


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: p.name)
def test_no_world_open_ingress_and_token_auth_on(path):
    text = path.read_text()
    assert not AUTH_DISABLED.search(text), f"{path.name} disables Ray token auth"
    problems = [p for doc in yaml.safe_load_all(text) for p in ingress_violations(doc)]
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_readme_commands_open_nothing_to_the_world():
    """The GCP firewall rules live as gcloud commands in the README: check its code blocks."""
    readme = (CLUSTERS / "README.md").read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.S)
    assert any("firewall-rules create" in b for b in blocks)
    for block in blocks:
        assert not _world_open(block), block
        assert not AUTH_DISABLED.search(block), block
    for m in re.finditer(r"--source-ranges=(\S+)", readme):
        for cidr in m.group(1).split(","):
            net = ipaddress.ip_network(cidr)
            assert net.is_private or net.subnet_of(ADMIN_PLACEHOLDER), cidr


def test_ssh_is_limited_to_the_admin_placeholder():
    cfn = load("aws-network.yaml")
    admin = cfn["Parameters"]["AdminCidr"]
    assert ipaddress.ip_network(admin["Default"]) == ADMIN_PLACEHOLDER
    assert not re.fullmatch(admin["AllowedPattern"], "0.0.0.0/0")
    (ssh,) = cfn["Resources"]["ClusterSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (ssh["FromPort"], ssh["ToPort"], ssh["CidrIp"]) == (22, 22, {"Ref": "AdminCidr"})
    internal = cfn["Resources"]["ClusterInternalIngress"]["Properties"]
    assert internal["SourceSecurityGroupId"] == {"Ref": "ClusterSecurityGroup"}
    assert "CidrIp" not in internal


def test_real_configs_give_no_false_alarm_but_planted_rules_are_caught():
    aws = load("aws.yaml")
    assert ingress_violations(aws) == []

    planted = copy.deepcopy(aws)
    planted["provider"]["security_group"] = {"GroupName": "x", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    assert ingress_violations(planted), "world-open AWS IpPermissions not caught"
    ray_validate(planted)          # ...and Ray's schema would happily accept it

    ipv6 = copy.deepcopy(aws)
    ipv6["provider"]["security_group"] = {"IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379,
         "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}]}
    assert ingress_violations(ipv6)

    cfn = load("aws-network.yaml")
    assert ingress_violations(cfn) == []
    cfn_open = copy.deepcopy(cfn)
    cfn_open["Parameters"]["AdminCidr"]["Default"] = "0.0.0.0/0"
    assert ingress_violations(cfn_open)
    cfn_egress = copy.deepcopy(cfn)
    cfn_egress["Resources"]["ClusterSecurityGroup"]["Properties"]["SecurityGroupEgress"] = [
        {"IpProtocol": "-1", "CidrIp": "0.0.0.0/0"}]
    assert ingress_violations(cfn_egress) == [], "egress to the world is not an ingress rule"

    gcp_rule = {"name": "mixray-dashboard", "direction": "INGRESS",
                "allowed": [{"IPProtocol": "tcp", "ports": ["8265"]}],
                "sourceRanges": ["0.0.0.0/0"]}
    assert ingress_violations(gcp_rule)
    cmd = "gcloud compute firewall-rules create x --allow=tcp:8265 --source-ranges=0.0.0.0/0"
    assert ingress_violations({"cmd": cmd})

    docs = load_all(KUBERAY)
    assert [v for d in docs for v in ingress_violations(d)] == []
    lb = copy.deepcopy(docs)
    svc = next(d for d in lb if d["kind"] == "Service")
    svc["spec"]["type"] = "LoadBalancer"
    assert [v for d in lb for v in ingress_violations(d)]
    nodeport = copy.deepcopy(docs)
    job = next(d for d in nodeport if d["kind"] == "RayJob")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["serviceType"] = "NodePort"
    assert [v for d in nodeport for v in ingress_violations(d)]

    no_auth = copy.deepcopy(aws)
    no_auth["head_start_ray_commands"][1] = no_auth["head_start_ray_commands"][1].replace(
        "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")
    assert ingress_violations(no_auth)
    env_off = {"env": [{"name": "RAY_AUTH_MODE", "value": "disabled"}]}
    assert ingress_violations(env_off)
    kube_off = copy.deepcopy(docs)
    next(d for d in kube_off if d["kind"] == "RayJob")["spec"]["rayClusterSpec"]["authOptions"] = {
        "mode": "disabled"}
    assert [v for d in kube_off for v in ingress_violations(d)]


def test_one_setup_script_installs_each_role(tmp_path):
    """clusters/setup-node.sh, run with a pip that only records its arguments: the GPU worker
    installs the CUDA build of pyproject's torch pin before mixray with the vllm extra; the head
    the CPU build and no vLLM; KubeRay's image recipe names the same script."""
    log = tmp_path / "pip.log"
    fake = tmp_path / "bin" / "pip"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    pin = re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
    for role in ("gpu-worker", "head"):
        log.write_text("")
        subprocess.run(["bash", str(ROOT / "clusters" / "setup-node.sh"), role, str(ROOT)],
                       env=env, check=True)
        torch_line, mixray_line = log.read_text().splitlines()
        assert pin in torch_line and ("whl/cpu" in torch_line) == (role == "head")
        assert mixray_line.endswith(f"-e {ROOT}[cluster,vllm]" if role == "gpu-worker"
                                    else f"-e {ROOT}[cluster]")
    bad = subprocess.run(["bash", str(ROOT / "clusters" / "setup-node.sh"), "laptop", str(ROOT)],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown role" in bad.stderr
    assert "setup-node.sh gpu-worker" in (ROOT / "clusters" / "kuberay.yaml").read_text()
