"""What --dry-run refuses before a cluster is booked, and the real run refuses the same way before
Ray starts: missing local files, model specs that cannot resolve, tracking URIs MLflow refuses
(issue 26, item 4). Every sweep file in sweeps/ passes: no false alarms on the recipes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mixray.config import SweepFileError, load_sweep
from mixray.sweep.__main__ import main
from mixray.sweep.preflight import check_inputs

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "sweeps" / "smoke.yaml")


@pytest.mark.parametrize("sweep", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_passes(sweep: Path) -> None:
    check_inputs(load_sweep(sweep))


@pytest.mark.parametrize(("override", "key"), [
    ("problems.source={kind: dataset, path: no/such/train.jsonl}", "problems.source.path"),
    ("evaluate.benchmarks=[{kind: dataset, name: mine, path: no/such.parquet}]",
     "evaluate.benchmarks[0].path (mine)"),
    ("students=[./no-such-model]", "students[0]"),
    ("teachers.long.model=/no/such/teacher", "teachers.long.model"),
    ("students=[owner/name@]", "students[0]"),
    ("tracking.tracking_uri=runs/mlruns", "a path is a file store"),
    ("tracking.tracking_uri=htp://head:5000", "MLflow knows no store 'htp'"),
    ("tracking.tracking_uri=http://", "needs a host"),
])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-run"])
def test_what_cannot_work_is_refused_naming_its_key(override: str, key: str, dry_run: bool,
                                                   tmp_path: Path, capsys) -> None:
    code = main([SMOKE, f"--set=run_root={tmp_path}", f"--set={override}",
                 *(["--dry-run"] if dry_run else [])])
    out, err = capsys.readouterr()
    assert code == 2 and key in err and "Traceback" not in err, err
    assert "output of Ray" not in out  # the real run stopped before it started anything
    assert not (tmp_path / "sweeps").exists()


def test_a_model_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    cfg = load_sweep(SMOKE, [f"students=[{tmp_path / 'weights'}]"])
    with pytest.raises(SweepFileError, match=r"students\[0\]: model dir .* has no config.json"):
        check_inputs(cfg)


def test_files_that_exist_and_usable_uris_pass(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    for uri in ("sqlite:///runs/mlflow.db", "http://mixray-head:5000", "postgresql://u@h/db"):
        check_inputs(load_sweep(SMOKE, [
            f"problems.source={{kind: dataset, path: {data}}}",
            f"tracking.tracking_uri={uri}"]))


# --- --cluster: the sweep against the cluster file it is meant for ----------------------------

PAPER_MIX = str(REPO / "sweeps" / "paper-mix.yaml")


@pytest.mark.parametrize("cluster_file", ["aws.yaml", "gcp.yaml", "kuberay.yaml"])
@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "sweeps").glob("paper-*.yaml")))
def test_the_paper_recipes_fit_each_cloud_cluster_file(recipe: str, cluster_file: str,
                                                       tmp_path: Path, capsys) -> None:
    """Node types, capacity and GPU memory (the memory preview) of every paper recipe against
    every cloud cluster file."""
    code = main([str(REPO / "sweeps" / recipe), f"--set=run_root={tmp_path}", "--dry-run",
                 f"--cluster={REPO / 'clusters' / cluster_file}"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(("override", "expected"), [
    ("resources.node_types.evaluation=gpu_node", r"resources\.node_types\.evaluation is "
     r"'gpu_node', but no node type of .*kuberay\.yaml carries that resource"),
    ("evaluate.judge.engine.tensor_parallel_size=64",
     r"one judge replica .* needs 64 GPUs but .*kuberay\.yaml has"),
])
def test_a_sweep_its_cluster_file_cannot_hold_is_refused_before_ray_starts(
        override: str, expected: str, tmp_path: Path, capsys) -> None:
    """Issue 26, item 4: with --cluster, what the real run would refuse once the cluster is up
    (a node type the file never declares, a replica larger than any node) is refused before it
    is booked, with exit 2 and the key, as the real run does it (plan.check_resources)."""
    code = main([PAPER_MIX, f"--set=run_root={tmp_path}", f"--set={override}", "--dry-run",
                 f"--cluster={REPO / 'clusters' / 'kuberay.yaml'}"])
    assert code == 2
    assert re.search(expected, capsys.readouterr().err)


def test_a_kuberay_manifest_offers_what_its_pods_give_ray() -> None:
    """KubeRay gives Ray a pod's container limits (CPU, nvidia.com/gpu) and the custom resources
    of its rayStartParams, times the group's maxReplicas."""
    from mixray import cluster

    path = REPO / "clusters" / "kuberay.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    spec = next(d["spec"]["rayClusterSpec"] for d in docs if d.get("kind") == "RayJob")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    teacher, trainer = groups["teacher-8gpu"], groups["trainer-4gpu"]
    most = cluster.launcher_maximum(path)
    assert most["teacher_node"] == teacher["maxReplicas"]
    assert most["trainer_node"] == trainer["maxReplicas"]
    gpus = [g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
            for g in (teacher, trainer)]
    assert most["GPU"] == gpus[0] * teacher["maxReplicas"] + gpus[1] * trainer["maxReplicas"]
    assert cluster.launcher_maximum(path, "trainer_node")["GPU"] == gpus[1] * \
        trainer["maxReplicas"]


def test_a_cluster_file_without_node_types_is_refused(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "not-a-cluster.yaml"
    empty.write_text("kind: Namespace\n")
    assert main([SMOKE, f"--set=run_root={tmp_path}", "--dry-run", f"--cluster={empty}"]) == 2
    assert "declares no node types" in capsys.readouterr().err


def _hub_error(kind: str):
    """What huggingface_hub raises for a 404 of its API: the response a real one carries."""
    import httpx2
    from huggingface_hub import errors

    url = "https://huggingface.co/api/models/x"
    return getattr(errors, kind)(f"404 {kind}", response=httpx2.Response(
        404, request=httpx2.Request("GET", url)))


def test_where_the_hub_answers_a_missing_model_or_revision_is_refused(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """The hub itself cannot be reached from here: a fake of its API (HfApi.model_info, named as
    such) answers as the hub does for a missing repository, a missing revision and a gated one."""
    from huggingface_hub import HfApi

    from mixray import models

    def fake_model_info(self, repo_id: str, revision: str | None = None, **_: object) -> None:
        if repo_id == "nobody/no-such-model":
            raise _hub_error("RepositoryNotFoundError")
        if revision == "no-such-rev":
            raise _hub_error("RevisionNotFoundError")
        if repo_id == "meta-llama/Llama-3.2-3B-Instruct":
            raise _hub_error("GatedRepoError")   # exists; downloading it needs a token

    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s=0: True)
    monkeypatch.setattr(HfApi, "model_info", fake_model_info)
    code = main([PAPER_MIX, f"--set=run_root={tmp_path}", "--dry-run",
                 "--set=students=[nobody/no-such-model, Qwen/Qwen2.5-3B-Instruct@no-such-rev, "
                 "meta-llama/Llama-3.2-3B-Instruct]"])
    err = capsys.readouterr().err
    assert code == 2
    assert "students[0]: no hub model 'nobody/no-such-model'" in err
    assert "students[1]: hub model 'Qwen/Qwen2.5-3B-Instruct' has no revision 'no-such-rev'" in err
    assert "students[2]" not in err


def test_where_the_hub_does_not_answer_hub_ids_pass_on_their_form(tmp_path: Path) -> None:
    from mixray import models

    if models.hub_reachable(timeout_s=0.5):
        pytest.skip("this machine reaches the model hub (CI's does not)")
    check_inputs(load_sweep(PAPER_MIX, [f"run_root={tmp_path}",
                                        "students=[nobody/no-such-model]"]))


def test_the_thinking_recipe_dry_runs_and_says_what_it_decontaminates(tmp_path: Path,
                                                                      capsys) -> None:
    """sweeps/think-mix.yaml: refused by nothing but the lack of GPUs (issue 28)."""
    code = main([str(REPO / "sweeps" / "think-mix.yaml"), f"--set=run_root={tmp_path}",
                 "--dry-run", f"--cluster={REPO / 'clusters' / 'aws.yaml'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"decontam : training problems sharing a run of 8 words .* with math500, "
                     r"gsm8k, amc2023, aime2024, olympiadbench are set aside", out)
