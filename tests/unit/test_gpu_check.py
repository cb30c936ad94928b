"""The GPU acceptance run's pure parts (benchmarks/gpu_check/): the peak-FLOPS table, the FLOP and
MFU arithmetic, the loop's token accounting, the 0.5B model's shape, the carried wheels'
bookkeeping, and both halves' 'skipped' result where torch sees no GPU. No Ray, no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import cluster, common, loop, wheels

REPO = Path(__file__).resolve().parents[2]
QWEN_05B_PARAMS = 494_032_768  # Qwen2.5-0.5B's published count (tied embeddings)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4),  # how torch names the SXM part
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4),
    ("NVIDIA H200 NVL", 835.5),
    ("NVIDIA GH200 480GB", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L40S", 362.1),
    ("NVIDIA L4", 121.0),
    ("NVIDIA L40", None),  # not "L4": names match by words
    ("NVIDIA GeForce RTX 4090", None),
    ("Tesla T4", None),
])
def test_peak_is_looked_up_by_the_device_names_words(name: str, tflops: float | None) -> None:
    assert common.peak_bf16_tflops(name) == tflops


def test_mfu_is_flops_per_second_over_the_peak_of_every_gpu() -> None:
    # 100k tokens/s of the 0.5B model on one H100 SXM: 6 * 494M * 1e5 / 989.4e12 = 29.96%
    flops = common.flops_6nt(QWEN_05B_PARAMS, 100_000)
    assert common.mfu(flops, 1.0, 989.4, 1) == pytest.approx(0.29960, abs=1e-5)
    assert common.mfu(flops, 2.0, 989.4, 1) == pytest.approx(0.29960 / 2, abs=1e-5)
    assert common.mfu(flops, 1.0, 989.4, 2) == pytest.approx(0.29960 / 2, abs=1e-5)
    assert common.mfu(flops, 1.0, None, 1) is None  # a device the table lacks


def test_model_flops_count_the_head_on_loss_tokens_and_attention_within_samples() -> None:
    tied = common.model_shape(common.SIZES["0.5b"])
    assert tied == {"vocab": 151936, "hidden": 896, "layers": 24, "attention_width": 896,
                    "tied": True}
    n, tokens = QWEN_05B_PARAMS, 1000.0
    # every token has a loss and no attention: the 6NT count
    assert common.model_flops(tied, n, tokens, tokens, 0) == pytest.approx(6 * n * tokens)
    # prompt tokens skip the head: 6 x vocab x hidden fewer FLOPs each
    head = 151936 * 896
    assert (common.model_flops(tied, n, tokens, tokens, 0)
            - common.model_flops(tied, n, tokens, 600, 0)) == pytest.approx(6 * head * 400)
    # attention: 6 x layers x width x sum of n^2 (QK^T and AV, forward and backward)
    assert (common.model_flops(tied, n, tokens, tokens, 2 * 500**2)
            - common.model_flops(tied, n, tokens, tokens, 0)) == pytest.approx(
                6 * 24 * 896 * 2 * 500**2)
    # an untied head has its own matrix: counted once, as the head, never as the lookup
    untied = tied | {"tied": False}
    assert common.model_flops(untied, n + head, tokens, tokens, 0) == pytest.approx(
        6 * n * tokens)


def test_the_0_5b_size_has_qwen2_5_0_5b_s_parameter_count() -> None:
    c = common.SIZES["0.5b"]
    d, inner, layers, vocab = (c["hidden_size"], c["intermediate_size"],
                               c["num_hidden_layers"], c["vocab_size"])
    kv = c["num_key_value_heads"] * d // c["num_attention_heads"]
    per_layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * inner + 2 * d  # qkv biases
    assert vocab * d + layers * per_layer + d == QWEN_05B_PARAMS


def test_the_tiny_size_builds_with_its_vocabulary_padded(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    built = common.build_model(tmp_path / "m", "tiny", "cpu")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")  # as the loop and vLLM load it
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert len(tokenizer) == model.config.vocab_size == common.SIZES["tiny"]["vocab_size"]
    assert built["params"] == sum(p.numel() for p in model.parameters())
    assert tokenizer.get_vocab() == common.padded_tokenizer(len(tokenizer)).get_vocab()
    text = "Problem 3: add the numbers up. 12 + 7 = 19."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert isinstance(tokenizer.decode([len(tokenizer) - 1]), str)  # the last id decodes
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def test_tokens_per_step_follow_the_loops_batches() -> None:
    lengths, loss_lengths = [3, 5, 2, 4], [2, 3, 1, 2]
    units = [[0, 1], [2], [3]]
    got = loop.step_tokens(lengths, loss_lengths, units, world=1, micro=2, accum=1, steps=2)
    # step 0 takes units 0, 1: packs of 8 and 2 tokens in 2 rows of 8 cells
    assert got[0] == {"tokens": 10, "loss_tokens": 6, "cells": 16, "attention_sq": 38}
    # step 1 takes units 2, 0 (cycled)
    assert got[1] == {"tokens": 12, "loss_tokens": 7, "cells": 16, "attention_sq": 50}
    two_ranks = loop.step_tokens(lengths, loss_lengths, units, world=2, micro=1, accum=1,
                                 steps=1)
    assert two_ranks[0]["tokens"] == 10 and two_ranks[0]["cells"] == 8 + 2  # a row each


def test_the_steady_window_starts_after_the_warmup() -> None:
    history = [{"wall_s": s} for s in (2.0, 3.0, 3.5, 4.0)]
    tokens = [{"tokens": 10 * (i + 1), "loss_tokens": 5, "attention_sq": 1} for i in range(4)]
    window = loop.steady(history, tokens, warmup=1)
    assert window == {"steps": 3, "seconds": 2.0, "tokens": 90.0, "loss_tokens": 15.0,
                      "attention_sq": 3.0}


def test_synthetic_rows_stay_under_the_packing_length() -> None:
    from mixray.models import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    rows = loop.synthetic_rows(200, 256)
    lengths = [len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) for r in rows]
    assert {r["pool"] for r in rows} == {"long", "short"}
    # 256/160 .. 256/20 clauses of about 8 tokens here (12 with Qwen2's digit split)
    assert 10 <= min(lengths) and max(lengths) <= 0.5 * 256


def test_wheel_names_normalise_to_distributions() -> None:
    assert wheels._dist("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl") == \
        "pydantic-core"
    assert wheels._dist("typing_extensions") == "typing-extensions"
    assert wheels._dist("deepspeed-0.19.8-py3-none-any.whl") == "deepspeed"


def test_installing_the_carried_wheels_is_a_no_op_where_nothing_is_missing(tmp_path: Path,
                                                                             capsys) -> None:
    target = tmp_path / "site"
    target.mkdir()
    assert wheels.install(tmp_path / "none", target) == 0  # no wheels: nothing, and SITE gone
    assert not target.exists()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python, versions, said in [("2.7", {}, "for Python 2.7"),
                                   (here, wheels.pinned(), "nothing to install")]:
        (tmp_path / wheels.LOCK).write_text(json.dumps(
            {"python_version": python, "versions": versions, "wheels": {}}))
        assert wheels.install(tmp_path, target) == 0
        assert said in capsys.readouterr().out
    assert wheels.missing({"deepspeed": "0.0.1", "no-such-dist-here": "1"}) == [
        "deepspeed", "no-such-dist-here"]


def test_the_evaluation_through_vllm_is_a_valid_evaluate_command(tmp_path: Path) -> None:
    from mixray.evaluate.__main__ import build_parser, config_from_args

    args = cluster.parse_args(["--out", str(tmp_path / "x.json")])
    cfg = config_from_args(build_parser().parse_args(
        cluster.evaluate_argv(args, tmp_path, tmp_path / "model")))
    assert cfg.engine.kind == "vllm" and cfg.engine.dtype == "bfloat16"
    assert cfg.engine.enforce_eager is False  # compiled, as the recipes run vLLM
    assert cfg.gpus_per_replica == 1 and cfg.sampling.temperature == 0.0
    assert cfg.benchmarks[0].size == args.eval_problems


def test_pytest_counts_come_from_the_junit_report(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="2" '
                      'failures="0" errors="0" skipped="1"><testcase name="a"/></testsuite>'
                      '</testsuites>')
    assert cluster.junit_counts(report) == {"tests": 2, "failures": 0, "errors": 0, "skipped": 1}


@pytest.mark.parametrize("half", ["loop", "cluster"])
def test_each_half_writes_skipped_without_a_gpu(half: str, tmp_path: Path) -> None:
    out = tmp_path / f"gpu_check_{half}.json"
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # no GPU, also on a machine with one
    env.pop("OUT", None)
    done = subprocess.run([sys.executable, "-m", f"benchmarks.gpu_check.{half}", "--out",
                           str(out)], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{half} half skipped: no CUDA" in done.stdout
    report = json.loads(out.read_text())
    assert report["skipped"] == "no CUDA" and report["half"] == half
    assert report["versions"]["torch"]
    if half == "loop":  # the torchrun path and the HF engine were imported, without Ray or vLLM
        assert report["imports"]["modules"] == list(loop.TORCHRUN_MODULES)
        assert report["imports"]["forbidden_imported"] == []
