"""GPU acceptance, cluster half: Ray Train with NCCL, vLLM against HF, an evaluation on vLLM.

    make gpu-check-cluster         # or: python -m benchmarks.gpu_check.cluster [--out PATH]

Needs a GPU node with the full install (`make setup` there installs a CUDA torch and the `vllm`
wheel: README, "GPU acceptance"). Exits 0 with {"skipped": "no CUDA"} where torch sees no GPU
(before importing Ray or vLLM), 1 where Ray or vLLM is missing or any part fails. In order:

1. ``train_gpu_test``: ``pytest tests/integration/test_train_gpu.py`` (one Ray Train worker on a
   GPU, `cpu:gloo,cuda:nccl`, bf16, ZeRO-2, export and reload). Passing means 1 passed and none
   skipped: a skip on a GPU host is a failure (the test could not see the GPU).
2. ``vllm_vs_hf``: the Qwen2.5-0.5B-shaped model built in code (`common.build_model`, random
   weights, so every completion runs to --max-new-tokens), the prompts of
   `benchmarks/vllm_vs_hf.py`, greedy, timed as there (warm-up, then one batch): `VLLMEngine`
   (bf16, compiled unless --vllm-eager, as the recipes run it) first, shut down, then `HFEngine`
   on cuda in bf16. tokens/s = generated tokens / that call's wall time.
3. ``evaluate_vllm``: ``python -m mixray.evaluate`` of the same model on an offline
   reasoning-gym set with ``--engine {kind: vllm, ...}`` and one GPU per replica: the generation
   stage's Ray Data actor on the GPU, scoring, MLflow (a sqlite store in the work dir). Passing
   means exit 0, every problem scored and no failed sample.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from benchmarks.gpu_check import common

log = logging.getLogger("mixray.benchmarks.gpu_check.cluster")
NEEDED = ("ray", "vllm")
GPU_TEST = "tests/integration/test_train_gpu.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=common.default_out("gpu_check_cluster.json"))
    p.add_argument("--size", choices=sorted(common.SIZES), default="0.5b")
    p.add_argument("--batch", type=int, default=32, help="prompts in the timed batch")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                   help="vLLM's share of the GPU (a 0.5B model needs a few GiB)")
    p.add_argument("--vllm-eager", action="store_true",
                   help="no CUDA graphs or compilation: a faster start, slower decoding")
    p.add_argument("--eval-problems", type=int, default=64)
    p.add_argument("--parts", nargs="+", default=["train_gpu_test", "vllm_vs_hf",
                                                  "evaluate_vllm"],
                   choices=["train_gpu_test", "vllm_vs_hf", "evaluate_vllm"])
    p.add_argument("--timeout-s", type=int, default=420, help="per subprocess")
    p.add_argument("--work", type=Path, help="working folder (default: a temp dir, removed)")
    p.add_argument("--logs", type=Path, help="copy the subprocess logs here (default: $OUT)")
    args = p.parse_args(argv)
    if args.logs is None and os.environ.get("OUT"):
        args.logs = Path(os.environ["OUT"])
    return args


def run_logged(cmd: list[str], log_path: Path, timeout_s: int, logs: Path | None,
               env: dict[str, str] | None = None) -> tuple[int | None, float]:
    """Run `cmd` in the repo, its output to `log_path` (copied to `logs`); (rc or None if it
    timed out, seconds)."""
    started = time.perf_counter()
    with log_path.open("w") as f:
        try:
            rc: int | None = subprocess.run(cmd, check=False, cwd=common.REPO, env=env,
                                            stdout=f, stderr=subprocess.STDOUT,
                                            timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, logs / log_path.name)
    return rc, time.perf_counter() - started


def _check(rc: int | None, what: str, log_path: Path, timeout_s: int) -> None:
    if rc != 0:
        how = f"timed out after {timeout_s} s" if rc is None else f"exited {rc}"
        raise RuntimeError(f"{what} {how}; log tail:\n"
                           + common.failed_tail(log_path.read_text(errors="replace")))


def junit_counts(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped of a pytest --junitxml report."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def train_gpu_test(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    junit, log_path = work / "junit.xml", work / "gpu_check_cluster_pytest.log"
    cmd = [sys.executable, "-m", "pytest", GPU_TEST, "-p", "no:cacheprovider", "-rA",
           f"--junitxml={junit}"]
    rc, seconds = run_logged(cmd, log_path, args.timeout_s, args.logs)
    _check(rc, "pytest " + GPU_TEST, log_path, args.timeout_s)
    counts = junit_counts(junit)
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    assert passed >= 1 and counts["skipped"] == 0, \
        f"{GPU_TEST} on a GPU host: {counts} (a skip means the test saw no GPU)"
    return counts | {"passed": passed, "seconds": round(seconds, 1)}


def vllm_vs_hf(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    import torch

    from benchmarks.vllm_vs_hf import _summary, _time, make_prompts
    from mixray.generate.config import SamplingConfig
    from mixray.generate.hf import HFEngine
    from mixray.generate.vllm import VLLMEngine

    prompts = make_prompts(args.batch)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0, seed=0)
    start = time.perf_counter()
    engine = VLLMEngine.load(model_dir, dtype="bfloat16", enforce_eager=args.vllm_eager,
                             max_model_len=args.max_model_len,
                             gpu_memory_utilization=args.gpu_memory_utilization)
    vllm_load = time.perf_counter() - start
    try:
        vllm_results, vllm_s = _time(engine, prompts, sampling)
    finally:
        engine.close()
    start = time.perf_counter()
    hf_engine = HFEngine.load(model_dir, device="cuda", dtype="bfloat16")
    hf_load = time.perf_counter() - start
    hf_results, hf_s = _time(hf_engine, prompts, sampling)
    del hf_engine
    torch.cuda.empty_cache()
    vllm = _summary("vllm", vllm_load, vllm_results, vllm_s)
    hf = _summary("hf", hf_load, hf_results, hf_s)
    assert vllm["generated_tokens"] > 0 and hf["generated_tokens"] > 0, (vllm, hf)
    return {"batch": args.batch, "max_new_tokens": args.max_new_tokens, "greedy": True,
            "vllm": vllm | {"dtype": "bfloat16", "enforce_eager": args.vllm_eager},
            "hf": hf | {"dtype": "bfloat16", "device": "cuda"},
            "ratio_vllm_over_hf_tokens_per_s": round(vllm["tokens_per_s"] / hf["tokens_per_s"],
                                                     2),
            # bf16 in two engines' kernels: random weights' near-ties can break either way
            "identical_texts": sum(a.text == b.text for a, b in zip(vllm_results, hf_results))}


def evaluate_engine(args: argparse.Namespace) -> dict[str, Any]:
    """The vLLM engine section of the evaluation: the comparison's settings, so that vLLM's
    compile cache from part 2 serves this start too."""
    return {"kind": "vllm", "dtype": "bfloat16", "max_model_len": args.max_model_len,
            "enforce_eager": args.vllm_eager,
            "gpu_memory_utilization": args.gpu_memory_utilization}


def evaluate_argv(args: argparse.Namespace, work: Path, model_dir: Path) -> list[str]:
    """`python -m mixray.evaluate`'s arguments: a fresh local Ray, one GPU per replica."""
    return ["--model", str(model_dir), "--benchmarks",
            f"rg:basic_arithmetic:{args.eval_problems}",
            "--engine", json.dumps(evaluate_engine(args)), "--gpus-per-replica", "1",
            "--max-new-tokens", str(args.max_new_tokens), "--out", str(work / "eval"),
            "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--experiment", "gpu-check",
            "--ray-address", "local"]


def evaluate_vllm(args: argparse.Namespace, work: Path, model_dir: Path) -> dict[str, Any]:
    out, log_path = work / "eval", work / "gpu_check_cluster_evaluate.log"
    engine = evaluate_engine(args)
    cmd = [sys.executable, "-m", "mixray.evaluate", *evaluate_argv(args, work, model_dir)]
    rc, seconds = run_logged(cmd, log_path, args.timeout_s, args.logs)
    _check(rc, "python -m mixray.evaluate --engine vllm", log_path, args.timeout_s)
    report = json.loads((out / "metrics.json").read_text())
    bench = report["benchmarks"]
    assert all(m["error_rate"] == 0 for m in bench.values()), f"failed samples: {bench}"
    assert sum(m["n_problems"] for m in bench.values()) == args.eval_problems, bench
    return {"seconds": round(seconds, 1), "engine": engine, "benchmarks": bench,
            "average": report["average"], "generation": report.get("generation")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mixray import logs

    logs.configure()
    import torch

    report: dict[str, Any] = {"half": "cluster",
                              "installed": {m: importlib.util.find_spec(m) is not None
                                            for m in NEEDED}}
    report["versions"] = common.versions(NEEDED)
    if not torch.cuda.is_available():
        return common.skipped(report, args.out, "no CUDA")
    missing = [m for m, found in report["installed"].items() if not found]
    if missing:
        report["errors"] = {"install": f"{missing} not importable: the cluster half needs the "
                            "full install (make setup on this GPU host: a CUDA torch and vllm)"}
        common.write(report, args.out)
        print(report["errors"]["install"], file=sys.stderr)
        return 1
    return run(args, report)


def run(args: argparse.Namespace, report: dict[str, Any]) -> int:
    started = time.perf_counter()
    report |= {"gpus": common.devices(), "parts": args.parts}
    errors: dict[str, str] = {}
    report["errors"] = errors
    work = args.work or Path(tempfile.mkdtemp(prefix="mixray-gpu-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    for part in args.parts:
        try:
            if part == "train_gpu_test":
                report[part] = train_gpu_test(args, work)
                continue
            if "model" not in report:
                report["model"] = common.build_model(model_dir, args.size, "cuda")
            report[part] = (vllm_vs_hf(args, model_dir) if part == "vllm_vs_hf"
                            else evaluate_vllm(args, work, model_dir))
        except Exception as e:  # the next part still runs: every outcome is reported
            log.exception("%s failed", part)
            errors[part] = f"{type(e).__name__}: {e}"
    if not common.finish(report, errors, args.out, work, args.work is not None, started):
        return 1
    ratio = report.get("vllm_vs_hf", {}).get("ratio_vllm_over_hf_tokens_per_s")
    print(f"cluster half passed in {report['wall_s']} s: vLLM / HF tokens/s = {ratio}; "
          f"{args.out}")
    return 0


if __name__ == "__main__":  # vLLM starts its engine core in a child process
    sys.exit(main())
