"""Teachers in the sweep file: engines as a discriminated choice, resources, n samples — the
validation, and what n samples per problem means for rows, resume, seeds, curation and the mix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from pydantic import ValidationError

from mixray.config import SweepFileError, load_sweep
from mixray.curate.stage import stats
from mixray.generate.config import (
    HFEngineConfig,
    HTTPEngineConfig,
    SamplingConfig,
    TeacherConfig,
    VLLMEngineConfig,
)
from mixray.generate.engine import row_seed
from mixray.generate.job import engine_probe, vllm_problem
from mixray.generate.stage import expand_samples, pending_rows
from mixray.mix.config import MixSpec
from mixray.mix.manifest import build_manifest

REPO = Path(__file__).resolve().parents[2]

# The teachers section of the README's example: every engine kind in one sweep.
TEACHERS = """
teachers:
  long:
    model: tiny-random
    style: long
    sampling: {max_new_tokens: 48, temperature: 0.7, n: 4, seed: 1}
  short:
    model: tiny-random
    style: short
    engine: {kind: vllm, tensor_parallel_size: 2, max_model_len: 4096, dtype: bfloat16,
             gpu_memory_utilization: 0.85, enable_prefix_caching: true}
    replicas: 4
  api:
    style: long
    engine: {kind: http, base_url: "http://10.0.0.5:8000/v1", model: Qwen2.5-72B-Instruct,
             api_key_env: TEACHER_API_KEY, max_requests_per_s: 20, max_retries: 5, timeout_s: 300}
    batch_size: 32
"""


def test_readme_teachers_validate(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    data["teachers"] = yaml.safe_load(TEACHERS)["teachers"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_sweep(path)
    long, short, api = (cfg.teachers[k] for k in ("long", "short", "api"))
    assert isinstance(long.engine, HFEngineConfig) and long.gpus == 0 and long.sampling.n == 4
    assert isinstance(short.engine, VLLMEngineConfig) and short.gpus == 2  # = tensor parallel
    assert isinstance(api.engine, HTTPEngineConfig) and api.gpus == 0
    assert api.model is None and api.local_model is None and long.local_model == "tiny-random"


@pytest.mark.parametrize(("teacher", "expected"), [
    ({"model": "m", "style": "long", "engine": {"kind": "tgi"}}, "expected tags: 'hf', 'vllm', 'http'"),
    ({"model": "m", "style": "long", "engine": {"kind": "vllm", "tensor_paralel_size": 2}},
     "Extra inputs"),
    ({"model": "m", "style": "long", "engine": {"kind": "vllm", "tensor_parallel_size": 2},
      "gpus_per_replica": 1}, "one GPU per tensor-parallel rank"),
    ({"style": "long", "engine": {"kind": "hf"}}, "needs a model"),
    ({"model": "m", "style": "long",
      "engine": {"kind": "http", "base_url": "http://h/v1", "model": "m"}}, "leave the teacher's"),
    ({"style": "long", "engine": {"kind": "http", "base_url": "http://h/v1", "model": "m"},
      "gpus_per_replica": 1}, "runs no model itself"),
    ({"style": "long", "engine": {"kind": "http", "base_url": "h:8000", "model": "m"}},
     "http:// or https://"),
    ({"style": "long", "engine": {"kind": "http", "base_url": "http://h/v1", "model": "m",
                                  "api_key_env": "sk-proj-12ab"}}, "never the key itself"),
    ({"model": "m", "style": "long", "sampling": {"n": 4}}, "identical samples"),
    ({"model": "m", "style": "long", "gpus_per_replica": -1}, "greater than or equal to 0"),
    ({"model": "m", "style": "long", "system_prompt": "Be brief."},
     "give system_prompt .* or style .*, not both"),
    ({"model": "m", "system_prompt": ""}, "at least 1 character"),
    ({"model": "m", "style": "medium"}, "'long' or 'short'"),
])
def test_teacher_mistakes_are_refused(teacher: dict, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        TeacherConfig.model_validate(teacher)


def test_vllm_on_cpu_takes_zero_gpus() -> None:
    t = TeacherConfig(model="m", style="long", engine={"kind": "vllm", "enforce_eager": True},
                      gpus_per_replica=0)
    assert t.gpus == 0


def test_sweep_file_error_names_the_engine_key(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    data["teachers"]["long"]["engine"] = {"kind": "vllm", "dtype": "int3"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SweepFileError, match=r"teachers\.long\.engine\.vllm\.dtype"):
        load_sweep(path)


def test_the_engine_probe_says_whether_vllm_is_installed_where_it_runs() -> None:
    """What generate.job.check_vllm runs as a Ray task on the engines' node type (issue 26: a
    CPU head need not have vLLM): the installed release, or None. Here, called in-process."""
    found = engine_probe(needs_cuda=False)
    assert (found["version"] is None) == (importlib.util.find_spec("vllm") is None)
    assert found["cuda"] is None and found["node"]


def test_a_node_without_vllm_is_named_with_its_node_type_and_the_install_command() -> None:
    """What a user reads when an engine's node type lacks vLLM or CUDA (check_vllm_sites)."""
    missing = vllm_problem({"version": None, "cuda": None, "node": "ip-10-0-3-7"},
                           "trainer_node", needs_cuda=True)
    assert missing and "not installed on ip-10-0-3-7 (node type trainer_node)" in missing
    assert "clusters/setup-node.sh gpu-worker" in missing and "make vllm" in missing
    no_cuda = vllm_problem({"version": "0.32.0", "cuda": False, "node": "n"}, "teacher_node",
                           needs_cuda=True)
    assert no_cuda and "sees no CUDA device" in no_cuda
    assert vllm_problem({"version": "0.32.0", "cuda": None, "node": "n"}, None,
                        needs_cuda=False) is None


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_choosing_vllm_without_it_fails_clearly_at_run_time() -> None:
    import mixray.generate.stage  # noqa: F401  (importing mixray never needs vllm)
    from mixray.generate.vllm import import_vllm

    with pytest.raises(ImportError, match="needs the vllm package"):
        import_vllm()


# --- n samples per problem ------------------------------------------------------------------


def _problems(k: int) -> pa.Table:
    return pa.table({"problem_id": [f"p{i}" for i in range(k)],
                     "problem": [f"{i} + 1" for i in range(k)],
                     "answer": [str(i + 1) for i in range(k)]})


def test_rows_are_problems_times_samples_and_resume_takes_only_missing() -> None:
    rows = expand_samples(_problems(5), 3)
    keys = list(zip(rows["problem_id"].to_pylist(), rows["sample_idx"].to_pylist(), strict=True))
    assert len(keys) == 15 and len(set(keys)) == 15
    assert sorted(set(rows["sample_idx"].to_pylist())) == [0, 1, 2]
    done = {("p0", 0), ("p0", 2), ("p4", 1)}
    todo = pending_rows(rows, done)
    left = set(zip(todo["problem_id"].to_pylist(), todo["sample_idx"].to_pylist(), strict=True))
    assert todo.num_rows == 12 and left == set(keys) - done
    with pytest.raises(AssertionError, match="belong to no"):
        pending_rows(rows, {("p9", 0)})
    with pytest.raises(ValueError, match="unique"):
        expand_samples(pa.concat_tables([_problems(2), _problems(1)]), 2)


def test_row_seeds_differ_per_sample_and_ignore_batching() -> None:
    seeds = {row_seed(0, f"p{i}", s) for i in range(50) for s in range(8)}
    assert len(seeds) == 400 and all(0 <= s < 2**31 for s in seeds)
    assert row_seed(0, "p1", 2) == row_seed(0, "p1", 2) != row_seed(1, "p1", 2)


def test_hf_samples_of_one_problem_differ_across_batches() -> None:
    """Every batch used to be seeded alike: n samples of one problem split over batches of the
    same shape came out identical. Now a batch's generator is seeded from its rows."""
    from mixray.generate.hf import HFEngine
    from mixray.models import resolve

    engine = HFEngine.load(resolve("tiny-random"))
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0)
    prompt = [[{"role": "user", "content": "What is 2 + 3?"}]] * 2
    a = engine.generate(prompt, sampling, [row_seed(0, "p", 0), row_seed(0, "p", 1)])
    b = engine.generate(prompt, sampling, [row_seed(0, "p", 2), row_seed(0, "p", 3)])
    again = engine.generate(prompt, sampling, [row_seed(0, "p", 0), row_seed(0, "p", 1)])
    assert [c.text for c in a] != [c.text for c in b]
    assert [c.text for c in a] == [c.text for c in again]  # reproducible for the same rows


def _pool(ids: list[str], samples: list[int]) -> pa.Table:
    return pa.table({"problem_id": ids, "sample_idx": pa.array(samples, pa.int32()),
                     "prompt": ["q"] * len(ids), "completion": [f"c{i}" for i in range(len(ids))],
                     "n_tokens": pa.array([5] * len(ids), pa.int64())})


def test_per_problem_mix_takes_one_of_several_samples() -> None:
    """With n samples, a pool holds several correct responses per problem; mix.per_problem
    still gives each shared problem exactly once, from one pool (mixray/mix/manifest.py draws
    one of the pool's responses to it with mix.seed)."""
    long = _pool(["a", "a", "a", "b", "c", "c"], [0, 1, 3, 0, 0, 2])
    short = _pool(["a", "b", "b", "c", "d"], [1, 0, 1, 2, 0])
    spec = MixSpec(pools={"long": 0.5, "short": 0.5}, per_problem=True)
    manifest = build_manifest({"long": long, "short": short}, spec)
    ids = manifest.table["problem_id"].to_pylist()
    assert sorted(ids) == ["a", "b", "c"]  # shared problems only, each once
    again = build_manifest({"long": long, "short": short}, spec)
    assert again.table.equals(manifest.table)  # the choice is the seed's


def test_curation_stats_count_problems_and_samples() -> None:
    scored = pa.table({"problem_id": ["a", "a", "a", "b", "b", "b"],
                       "correct": [False, True, True, False, False, False],
                       "extracted": ["1", "2", "2", None, "3", "3"],
                       "verified_by": ["math_verify"] * 3 + [None] + ["string"] * 2,
                       "finish_reason": ["stop"] * 5 + ["error"],
                       "n_tokens": pa.array([4, 5, 6, 7, 8, 0], pa.int64())})
    s = stats(scored)
    assert s["rows"] == 6 and s["problems"] == 2 and s["problems_solved"] == 1
    assert s["accepted"] == 2 and s["acceptance_rate"] == pytest.approx(2 / 6)
    assert s["error_rate"] == pytest.approx(1 / 6)
