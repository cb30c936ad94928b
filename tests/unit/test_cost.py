"""The cost preview (mixray.cost.estimate, mixray.cost.actual): the estimate's arithmetic on a sweep small
enough to add up by hand, the smoke sweep's estimate without Ray, calibration from a previous
summary, the section kept out of every key, and the actual training tokens counted as the loop
builds its rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mixray.config import load_sweep
from mixray.cost.actual import format_comparison, row_lengths, steady_rate, trained
from mixray.cost.estimate import estimate, interpolate, params_b, train_rate
from mixray.sweep.__main__ import main
from mixray.sweep.summary import format_summary

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "sweeps" / "smoke.yaml"

# Two 32B vLLM teachers (TP 2 x 4 replicas = 8 GPUs each), a 3B student on 4 GPUs for 2 epochs,
# vLLM evaluation on 2 GPUs over MATH-500 and 100 GSM8K problems.
HAND = {
    "name": "hand", "students": ["Qwen/Qwen2.5-3B-Instruct"],
    "problems": {"train_size": 1000, "eval_size": 10},
    "teachers": {
        "qwq": {"model": "Qwen/QwQ-32B-Preview", "replicas": 4, "sampling": {"max_new_tokens":
                16384}, "engine": {"kind": "vllm", "tensor_parallel_size": 2}},
        "instruct": {"model": "Qwen/Qwen2.5-32B-Instruct", "replicas": 4, "sampling": {
                     "max_new_tokens": 4096}, "engine": {"kind": "vllm",
                                                         "tensor_parallel_size": 2}}},
    "mix": {"pools": {"qwq": 0.2, "instruct": 0.8}, "long_pool": "qwq", "short_pool": "instruct"},
    "train": {"num_workers": 4, "micro_batch_size": 1, "global_batch_size": 16, "epochs": 2,
              "max_length": 8192},
    "resources": {"gpus_per_train_worker": 1},
    "evaluate": {"benchmarks": ["math500", {"kind": "registry", "name": "gsm8k", "limit": 100}],
                 "engine": {"kind": "vllm"}, "replicas": 2, "sampling": {"max_new_tokens": 16000}},
    "cost": {"acceptance": 0.5, "problem_chars": 100, "chars_per_token": 4},
}


def _sweep(tmp_path: Path, data: dict, overrides: list[str] | None = None):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_sweep(path, overrides or [])


def test_the_estimate_adds_up_by_hand(tmp_path: Path) -> None:
    cfg = _sweep(tmp_path, HAND)
    est = estimate(cfg)
    # QwQ is a reasoning model: long CoT, 1,800 tokens; the instruct model short, 600.
    qwq, instruct = est.generate["qwq"], est.generate["instruct"]
    assert (qwq.tokens, instruct.tokens) == (1000 * 1800, 1000 * 600)
    # 32B is a table point: 1,300 tokens/s per GPU, 8 GPUs, 120 s to start
    assert math.isclose(qwq.seconds, 120 + 1.8e6 / (1300 * 8))
    assert math.isclose(qwq.gpu_hours, qwq.seconds * 8 / 3600)
    # half of each teacher's 1,000 responses kept; 0.2 / 0.8 of the mix: instruct's 500 rows
    # are the scarce supply, so 625 rows, 125 from qwq, and 2 epochs of them
    ((trial, train),) = est.train.items()
    prompt = (len("You are a helpful assistant.") + len(
        "Solve the following math problem. Present the final answer in the format: "
        "Final Answer: \\boxed{your_answer}.\nProblem: \nAnswer:") + 100) / 4 + 17
    mean = (125 * (prompt + 1800) + 500 * (prompt + 600)) / 625
    assert train.count == 1250 and math.isclose(train.each, mean)
    rate = 0.35 * 989e12 / (6 * 3e9)  # MFU x peak / 6 N, per GPU
    assert math.isclose(train.seconds, 120 + 1250 * mean / (4 * rate))
    assert math.isclose(train.gpu_hours, train.seconds * 4 / 3600)
    # 500 + 100 problems, the student writing like its mix: (125 x 1800 + 500 x 600) / 625
    evaluation = est.evaluate[trial]
    assert (evaluation.count, evaluation.each) == (600, 840)
    assert math.isclose(evaluation.seconds, 120 + 600 * 840 / (9000 * 2))
    lora = _sweep(tmp_path, HAND, ["train.lora={}"]).for_trial(cfg.students[0], {})
    assert math.isclose(train_rate(lora, {"train": {}}), rate * 6 / 4)  # no weight gradients


def test_all_problems_of_a_local_file_are_its_rows(tmp_path: Path) -> None:
    """train_size all counts a local file's records (less the carved held-out ones), not
    MATH's 7,500; a hub source keeps the default and cost.train_problems overrides both."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i} + 1", "answer": str(i + 1)}) + "\n"
                            for i in range(30)))
    local = HAND | {"problems": {"train_size": "all", "eval_size": 6, "source": {
        "kind": "dataset", "path": str(data)}}}
    assert estimate(_sweep(tmp_path, local)).generate["qwq"].tokens == 24 * 1800
    held_out = tmp_path / "test.jsonl"
    held_out.write_text(data.read_text())
    separate = ["problems.source.eval_path=" + str(held_out)]
    assert estimate(_sweep(tmp_path, local, separate)).generate["qwq"].tokens == 30 * 1800
    called = ["cost.train_problems=100"]
    assert estimate(_sweep(tmp_path, local, called)).generate["qwq"].tokens == 100 * 1800
    hub = HAND | {"problems": {"train_size": "all", "eval_size": 6, "source": {
        "kind": "dataset", "path": "hf:owner/name"}}}
    assert estimate(_sweep(tmp_path, hub)).generate["qwq"].tokens == 7500 * 1800


def test_sizes_and_rates_between_table_points() -> None:
    assert params_b("Qwen/Qwen2.5-72B-Instruct") == 72
    assert params_b("Qwen/Qwen2.5-0.5B-Instruct") == 0.5
    assert params_b("meta-llama/Llama-3.2-1B-Instruct") == 1
    assert params_b("HuggingFaceTB/SmolLM2-360M-Instruct") == 0.36
    assert params_b("/data/checkpoints/student") is None
    table = {1.0: 1000.0, 4.0: 250.0}
    assert interpolate(table, 0.1) == 1000  # flat below the smallest point
    assert math.isclose(interpolate(table, 2.0), 500)  # a line in log-log
    assert math.isclose(interpolate(table, 8.0), 125)  # 1/params above the largest


def test_smoke_estimate_without_ray() -> None:
    """Random teachers run to max_new_tokens: 24 problems x 48 and x 16 tokens; each trial
    trains 3 steps x 4 rows; evaluation is 8 held-out problems x 16 tokens. No Ray, MLflow,
    torch or transformers is imported to say so."""
    code = ("import sys, json; from mixray.config import load_sweep; from mixray.cost.estimate import "
            f"estimate; e = estimate(load_sweep({str(SMOKE)!r})); print(json.dumps("
            "[e.generate['long'].tokens, e.generate['short'].tokens, "
            "sorted(c.count for c in e.train.values()), "
            "sorted(c.tokens for c in e.evaluate.values()), "
            "sorted(m for m in sys.modules if m.split('.')[0] in "
            "('ray', 'mlflow', 'torch', 'transformers'))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert json.loads(out.splitlines()[-1]) == [1152, 384, [12, 12], [128, 128], []]


def test_dry_run_prints_the_cost(capsys) -> None:
    assert main([str(SMOKE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "generate long: 1.15k tokens = 24 problems x 1 x 48" in out
    assert "train (2 trials)" in out and "GPU-hours" in out


def test_calibration_replaces_the_defaults_it_measured(tmp_path: Path, capsys) -> None:
    measured = {"generate": {
        "qwq": {"model": "Qwen/QwQ-32B-Preview", "engine": "vllm", "gpu": True,
                "tokens_per_response": 3000.0, "acceptance": 0.8, "tokens_per_s_per_unit": 2000},
        "instruct": {"model": "another/model", "tokens_per_response": 1.0}},  # not this model
        "train": {"Qwen/Qwen2.5-3B-Instruct": {"gpu": True, "tokens_per_s_per_worker": 1e4}},
        "evaluate": {}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"cost": {"measured": measured}}))
    est = estimate(_sweep(tmp_path, HAND, [f"cost.calibrate_from={tmp_path / 'run'}"]))
    assert est.generate["qwq"].tokens == 1000 * 3000
    assert math.isclose(est.generate["qwq"].seconds, 120 + 3e6 / (2000 * 8))
    assert est.generate["instruct"].tokens == 1000 * 600
    (train,) = est.train.values()
    assert math.isclose(train.seconds, 120 + train.tokens / (1e4 * 4))
    # a summary from before cost.measured: curation's lengths and acceptance
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"stages": {"curate.instruct": {"stats": {
        "acceptance_rate": 0.3, "tokens_mean": 250.0}}}}))
    assert estimate(_sweep(tmp_path, HAND, [f"cost.calibrate_from={old}"])).generate[
        "instruct"].tokens == 1000 * 250
    data = HAND | {"cost": HAND["cost"] | {"calibrate_from": str(tmp_path / "missing.json")}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    assert main([str(tmp_path / "bad.yaml"), "--dry-run"]) == 2
    assert "cost.calibrate_from" in capsys.readouterr().err


def test_the_cost_section_is_in_no_key(tmp_path: Path) -> None:
    from mixray.generate.stage import generation_spec

    base = _sweep(tmp_path, HAND)
    other = _sweep(tmp_path, HAND, ["cost.acceptance=0.9", "cost.throughput.train_mfu=0.5"])
    assert base.resume_key() == other.resume_key()
    assert generation_spec("qwq", base.teachers["qwq"], "k") == \
        generation_spec("qwq", other.teachers["qwq"], "k")


@pytest.fixture(scope="module")
def tokenizer():
    from mixray.models import train_tiny_tokenizer

    return train_tiny_tokenizer()


def test_actual_training_tokens_are_the_loops_rows(tmp_path: Path, tokenizer) -> None:
    """Row lengths as `mixray.train.data.build_examples` makes them (overlong rows dropped or
    cut), and the rows the steps consumed, cycled: 3 steps x 4 rows over a 3-row manifest."""
    from mixray.train.data import build_examples

    cfg = load_sweep(SMOKE, ["train.max_length=64", "train.overlong=drop"])
    completions = ["3 + 4 = 7.", "The answer is 12 * 3 - 1 = 35, so 35.", "1 + 1 = 2. " * 9,
                   "2 * 2 = 4."]
    rows = [{"prompt": f"Calculate {i} + {i}.", "completion": c,
             "n_tokens": len(tokenizer(c, add_special_tokens=False)["input_ids"])}
            for i, c in enumerate(completions)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    t = cfg.train
    examples, _, stats = build_examples(tokenizer, rows, system=t.system_prompt,
                                        max_length=t.max_length, overlong="drop",
                                        max_dropped_fraction=1.0)
    lengths = row_lengths(t, tmp_path / "manifest.parquet", tokenizer, {})
    assert stats.dropped_overlong == 1 and lengths == [len(e.input_ids) for e in examples]
    cut, _, _ = build_examples(tokenizer, rows, system=t.system_prompt, max_length=64,
                               overlong="truncate", max_dropped_fraction=1.0)
    assert row_lengths(t.model_copy(update={"overlong": "truncate"}), tmp_path /
                       "manifest.parquet", tokenizer, {}) == [len(e.input_ids) for e in cut]
    run = tmp_path / "train" / "checkpoint_000002"
    run.mkdir(parents=True)
    history = [{"step": s, "tokens_per_s": 100.0 * s, "wall_s": 2.0 * s, "epoch": 4 * s / 3}
               for s in (1, 2, 3)]
    (run / "history.json").write_text(json.dumps(history))
    got = trained(cfg, tmp_path, tmp_path / "train", tokenizer, {})
    assert got == {"tokens": 4 * sum(lengths), "seconds": 6.0,
                   "tokens_per_s_per_worker": 200.0 / t.num_workers}
    assert trained(cfg, tmp_path, tmp_path / "nothing", tokenizer, {}) is None


def test_a_measured_rate_leaves_the_start_up_out() -> None:
    """A later sweep adds its own start-up to tokens / rate, so a rate counts only the rest, and
    a run mostly start-up (the smoke sweep's 15 s generations, 22 s assumed) measures none."""
    assert steady_rate(1000, 100.0, 2, 20.0) == 1000 / 80 / 2
    assert steady_rate(1152, 15.0, 1, 22.0) is None


def test_the_summary_prints_estimate_against_actual() -> None:
    pair = {"estimate": {"tokens": 1000.0, "seconds": 30.0, "gpu_hours": 0.0},
            "actual": {"tokens": 1100, "seconds": 42.0, "cached": False}}
    cost = {"generate": {"long": pair}, "train": {"t0": pair | {"actual": None}},
            "evaluate": {"t0": pair}}
    text = format_comparison(cost)
    assert "generate long: 1k -> 1.1k tokens (+10%), ~30 s -> 42 s" in text
    assert "train t0: 1k tokens, ~30 s -> not measured" in text
    unknown = {"estimate": {"tokens": 10.0, "seconds": None, "gpu_hours": 0.0}, "actual": None}
    assert "time unknown -> not measured" in format_comparison(
        {"generate": {"x": unknown}, "train": {}, "evaluate": {}})
    summary = {"trials": [], "gaps": [], "timings_s": {}, "stages": {}, "summary_path": "-",
               "mlflow": {"parent_run_id": "p"}, "disk": {"run_root": "runs", "bytes": 0},
               "cost": cost}
    assert text in format_summary(load_sweep(SMOKE, []), summary)
