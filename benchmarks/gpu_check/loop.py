"""GPU acceptance, loop half: the SFT loop under torchrun on CUDA, with no Ray and no vLLM.

    make gpu-check-loop            # or: python -m benchmarks.gpu_check.loop [--out PATH]

On the GPU machine this needs Python, a CUDA torch >= 2.11, transformers and the wheels
`make gpu-wheels` prepares (DeepSpeed, pydantic, ...; `wheels.py`). In order:

1. Checks that the torchrun path (`mixray.train`'s entry, loop and engine) and the HF engine
   import neither ray nor vllm; exits 0 with {"skipped": "no CUDA"} where torch sees no GPU.
2. Builds a Qwen2.5-0.5B-shaped Qwen2 in code (`common.build_model`, 494M parameters, tied
   embeddings, the BPE trained in code padded to the 151,936-id vocabulary) and a synthetic
   manifest: 20% "long" / 80% "short" rows of about 160-1,250 tokens (about 12 per "a + b = c."
   clause), greedy-packed into sequences of --max-length.
3. For ZeRO-2 and ZeRO-3: `torchrun --nproc-per-node <GPUs> -m mixray.train` in bf16 for --steps
   steps of micro x accumulation x GPUs packed sequences (default 4 x 4 x 2,048 = 32k token cells
   per GPU and step). The tokens of each step are counted here with the loop's own functions
   (`mixray.train.data`: the same units, the same `batch_indices`), and checked against the
   loop's reported real-token share step by step, so tokens/s and MFU rest on what it trained
   on. Steady state: the steps after --warmup, over the loop's own `wall_s` between the end of
   step `warmup` and of the last step. Checks: every loss finite and the last below the first,
   ZeRO-2 and ZeRO-3 agree on step 1's loss, the student exported by each reloads with
   transformers (same parameter count, finite logits of shape [1, T, vocab], weights moved).
4. HF generate tokens/s of the ZeRO-2 student (`HFEngine`, bf16, greedy) on the same prompts as
   `benchmarks/vllm_vs_hf.py` (and the cluster half's comparison).

MFU = FLOPs / (seconds x peak x GPUs), two ways (`common`): `mfu_6nt` (6 x params x tokens, the
goal's measure, >= 0.40 on H100-class) and `mfu_model` (the head only on loss tokens, causal
attention within samples). `--allow-cpu` rehearses all of it on CPU (gloo) with `--size tiny`.
Any failed part makes the exit status 1; the JSON says which and ends with the log's tail.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check import common

log = logging.getLogger("mixray.benchmarks.gpu_check.loop")
# The torchrun path (mixray/train/__main__.py -> loop -> engine) and the generation engine
TORCHRUN_MODULES = ("mixray.train.__main__", "mixray.train.loop", "mixray.train.engine",
                    "mixray.generate.hf")
FORBIDDEN = ("ray", "vllm")
MIN_TORCH = (2, 11)
# bf16 step-1 losses of the same model on the same batch: ZeRO-3 gathers the same weights, so
# only reduction order differs (about 1e-3 relative); 2% catches a broken partition or export.
FIRST_LOSS_RTOL = 0.02


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=common.default_out("gpu_check_loop.json"))
    p.add_argument("--size", choices=sorted(common.SIZES), default="0.5b")
    p.add_argument("--zero-stages", type=int, nargs="+", default=[2, 3], choices=[0, 1, 2, 3])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the steady rate")
    p.add_argument("--micro", type=int, default=4, help="packed sequences per GPU per pass")
    p.add_argument("--accum", type=int, default=4, help="gradient accumulation steps")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per packed sequence")
    p.add_argument("--rows", type=int, default=2000, help="manifest rows (cycled)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="high enough that a random init's loss falls within --steps")
    p.add_argument("--gpus", type=int, help="torchrun processes (default: every GPU)")
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak per GPU, for a device the "
                   "table (common.PEAK_BF16_TFLOPS) lacks")
    p.add_argument("--timeout-s", type=int, default=300, help="per torchrun run")
    p.add_argument("--work", type=Path, help="working folder (default: a temp dir, removed)")
    p.add_argument("--logs", type=Path, help="copy the torchrun logs here (default: $OUT)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="rehearse on CPU (gloo) instead of skipping; no MFU")
    args = p.parse_args(argv)
    if not 1 <= args.warmup < args.steps - 1:
        p.error("--warmup must be at least 1 and leave two steps of --steps to time")
    if args.logs is None and os.environ.get("OUT"):
        args.logs = Path(os.environ["OUT"])
    return args


def synthetic_rows(n: int, max_length: int, seed: int = 0) -> list[dict[str, str]]:
    """Mix-Long-like rows: a short prompt, a completion of about max_length/13 .. 0.6 x
    max_length tokens (clauses of about 12 tokens: the Qwen2 pre-tokenizer splits digits one by
    one), 20% in pool 'long'. None exceeds max_length with the chat template's turns."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        clauses = rng.randint(max(1, max_length // 160), max(2, max_length // 20))
        text = " ".join(f"{a} + {b} = {a + b}." for a, b in
                        ((rng.randint(0, 99), rng.randint(0, 99)) for _ in range(clauses)))
        rows.append({"prompt": f"Problem {i}: add the numbers up.", "completion": text,
                     "pool": "long" if rng.random() < 0.2 else "short"})
    return rows


def step_tokens(lengths: list[int], loss_lengths: list[int], units: list[list[int]],
                world: int, micro: int, accum: int, steps: int) -> list[dict[str, int]]:
    """Per optimizer step, over all ranks and micro-batches, as the loop batches them: tokens
    (real, not padding), loss tokens, cells (rows x the widest pack of each micro-batch, what
    collate_packed allocates) and the sum of squared sample lengths (attention)."""
    from mixray.train.data import batch_indices

    out = []
    for step in range(steps):
        real = loss = cells = sq = 0
        for m in range(accum):
            for rank in range(world):
                packs = [units[i] for i in batch_indices(step * accum + m, rank, world, micro,
                                                         len(units))]
                widths = [sum(lengths[j] for j in pack) for pack in packs]
                real += sum(widths)
                cells += len(packs) * max(widths)
                loss += sum(loss_lengths[j] for pack in packs for j in pack)
                sq += sum(lengths[j] ** 2 for pack in packs for j in pack)
        out.append({"tokens": real, "loss_tokens": loss, "cells": cells, "attention_sq": sq})
    return out


def steady(history: list[dict], tokens: list[dict[str, int]], warmup: int) -> dict[str, float]:
    """Sums over the steps after `warmup` and the loop's wall time they took."""
    seconds = history[-1]["wall_s"] - history[warmup - 1]["wall_s"]
    kept = tokens[warmup:len(history)]
    return {"steps": len(kept), "seconds": seconds,
            **{k: float(sum(t[k] for t in kept)) for k in ("tokens", "loss_tokens",
                                                            "attention_sq")}}


def throughput(window: dict[str, float], built: dict[str, Any], peak: float | None,
               gpus: int) -> dict[str, Any]:
    n, shape, s = built["params"], built["shape"], window["seconds"]
    flops_6nt = common.flops_6nt(n, window["tokens"])
    flops_model = common.model_flops(shape, n, window["tokens"], window["loss_tokens"],
                                     window["attention_sq"])
    mfu_6nt = common.mfu(flops_6nt, s, peak, gpus)
    return {"steady_steps": window["steps"], "steady_seconds": round(s, 3),
            "tokens_per_s": round(window["tokens"] / s, 1),
            "tokens_per_s_per_gpu": round(window["tokens"] / s / gpus, 1),
            "tflops_per_gpu_6nt": round(flops_6nt / s / gpus / 1e12, 1),
            "mfu_6nt": None if mfu_6nt is None else round(mfu_6nt, 4),
            "mfu_model": _round(common.mfu(flops_model, s, peak, gpus)),
            "meets_mfu_goal": None if mfu_6nt is None else mfu_6nt >= common.MFU_GOAL}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def run_stage(zero: int, args: argparse.Namespace, work: Path, model_dir: Path,
              manifest: Path, train: dict[str, Any], tokens: list[dict[str, int]],
              built: dict[str, Any], world: int,
              peak: float | None) -> tuple[dict[str, Any], list[str]]:
    """One torchrun run of the loop: (its measurements, what is wrong with it). Raises when
    torchrun fails, with its log's tail."""
    config = work / f"train_zero{zero}.json"
    config.write_text(json.dumps(train | {"zero_stage": zero}))
    out = work / f"zero{zero}"
    logfile = work / f"gpu_check_loop_zero{zero}.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(world), "-m", "mixray.train", "--model", str(model_dir), "--manifest",
           str(manifest), "--config", str(config), "--out", str(out)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(common.REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log.info("ZeRO-%d: %s", zero, " ".join(cmd))
    started = time.perf_counter()
    with common.GpuMemory(work / f"memory_zero{zero}.csv") as memory, logfile.open("w") as f:
        try:
            done = subprocess.run(cmd, check=False, cwd=common.REPO, env=env, stdout=f,
                                  stderr=subprocess.STDOUT, timeout=args.timeout_s)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = None
    launch_s = time.perf_counter() - started
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(logfile, args.logs / logfile.name)
    if rc != 0:
        what = f"timed out after {args.timeout_s} s" if rc is None else f"exited {rc}"
        raise RuntimeError(f"torchrun (ZeRO-{zero}) {what}; log tail:\n"
                           + common.failed_tail(logfile.read_text(errors="replace")))
    history = json.loads((out / "history.json").read_text())
    params = json.loads((out / "params.json").read_text())
    losses = [h["train_loss"] for h in history]
    result = {"zero_stage": zero, "launch_to_result_s": round(launch_s, 1),
              "steps": len(history), "losses": [round(x, 4) for x in losses],
              "gpu_memory_peak_mib": memory.peak_mib(), "student": str(out / "model")}
    if len(history) <= args.warmup + 1:
        return result, [f"{len(history)} steps recorded, {args.steps} asked"]
    result |= {
        "step_s_median": round(statistics.median(
            b["wall_s"] - a["wall_s"] for a, b in itertools.pairwise(history)), 4),
        "tokens_per_step": tokens[len(history) - 1]["tokens"],
        "real_token_share": round(statistics.mean(h["real_token_share"] for h in history), 4),
        "loop_tokens_per_s_median": round(statistics.median(
            h["tokens_per_s"] for h in history[args.warmup:]), 1),
        **throughput(steady(history, tokens, args.warmup), built, peak, world)}
    shares = [(h["real_token_share"], t["tokens"] / t["cells"]) for h, t in zip(history, tokens)]
    off = [i + 1 for i, (got, want) in enumerate(shares) if abs(got - want) > 1e-6]
    problems = []
    if len(history) != args.steps:
        problems.append(f"{len(history)} steps recorded, {args.steps} asked")
    if not all(map(math.isfinite, losses)):
        problems.append(f"a loss is not finite: {losses}")
    elif not losses[-1] < losses[0]:
        problems.append(f"the loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")
    if params["total"] != built["params"]:
        problems.append(f"the loop counted {params} parameters, {built['params']} were built")
    if off:
        problems.append(f"steps {off[:5]}: the loop's real-token share differs from the one "
                        f"counted here (so tokens/step is not known): {shares[off[0] - 1]}")
    return result, problems


def reload_check(student: Path, initial: Path, built: dict[str, Any]) -> dict[str, Any]:
    """The exported student, loaded back with plain transformers on the device."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.bfloat16).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(student)
    ids = tokenizer("Problem 1: add the numbers up. 3 + 4 = 7.", return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=ids["input_ids"].to(device)).logits
    n_params = sum(p.numel() for p in model.parameters())
    name = "model.layers.0.mlp.down_proj.weight"
    before = None
    for shard in sorted(initial.glob("*.safetensors")):  # one file at 0.5B, shards if larger
        with safe_open(str(shard), "pt") as f:
            if name in list(f.keys()):
                before = f.get_tensor(name).to(device)
    assert before is not None, f"{initial} holds no {name}"
    moved = float((model.get_parameter(name).detach() - before).abs().max())
    shape = list(logits.shape)
    finite = bool(torch.isfinite(logits).all())
    del model, logits
    if device == "cuda":
        torch.cuda.empty_cache()
    want = [1, ids["input_ids"].shape[1], built["shape"]["vocab"]]
    assert n_params == built["params"], f"the student has {n_params} parameters"
    assert shape == want, f"logits of shape {shape}, expected {want}"
    assert finite, "the student's logits are not finite"
    assert moved > 0, f"{name} is what was built: the export holds no trained weights"
    return {"params": n_params, "logits_shape": shape, "finite": finite,
            "max_weight_change": moved}


def generate_check(model_dir: Path, batch: int, new_tokens: int) -> dict[str, Any]:
    """HF generate tokens/s, greedy, as benchmarks/vllm_vs_hf.py times it (same prompts)."""
    import torch

    from benchmarks.vllm_vs_hf import _summary, _time, make_prompts
    from mixray.generate.config import SamplingConfig
    from mixray.generate.hf import HFEngine

    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    engine = HFEngine.load(model_dir, device="cuda" if cuda else "cpu", dtype="bfloat16")
    load_s = time.perf_counter() - start
    results, seconds = _time(engine, make_prompts(batch),
                             SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, seed=0))
    del engine
    if cuda:
        torch.cuda.empty_cache()
    summary = _summary("hf", load_s, results, seconds)
    assert summary["generated_tokens"] > 0, "HF generate produced no token"
    return summary | {"batch": batch, "max_new_tokens": new_tokens, "dtype": "bfloat16",
                      "model": str(model_dir)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mixray import logs

    logs.configure()
    import torch

    report: dict[str, Any] = {"half": "loop"}
    problem: str | None = None
    try:  # a package missing here (DeepSpeed, pydantic: make gpu-wheels) fails with a JSON too
        report["imports"] = common.import_check(TORCHRUN_MODULES, FORBIDDEN)
        if report["imports"]["forbidden_imported"]:
            problem = (f"the loop half must run without Ray and vLLM, but importing "
                       f"{TORCHRUN_MODULES} loaded {report['imports']['forbidden_imported']}")
    except ImportError as e:
        problem = f"{type(e).__name__}: {e} (make gpu-wheels, then carry {e.name or 'it'})"
    report["versions"] = common.versions()
    if problem:
        report["errors"] = {"imports": problem}
        common.write(report, args.out)
        print(f"loop half FAILED: {problem}", file=sys.stderr)
        return 1
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        return common.skipped(report, args.out, "no CUDA")
    torch_version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if cuda and torch_version < MIN_TORCH:
        report["errors"] = {"torch": f"torch {torch.__version__}: the loop half needs >= 2.11"}
        common.write(report, args.out)
        return 1
    return run(args, report, cuda)


def run(args: argparse.Namespace, report: dict[str, Any], cuda: bool) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from mixray.train.config import TrainConfig
    from mixray.train.data import IGNORE, build_examples, make_units

    started = time.perf_counter()
    world = args.gpus or (torch.cuda.device_count() if cuda else 1)
    gpus = common.devices()
    peak = args.peak_tflops or (gpus[0]["peak_bf16_tflops"] if gpus else None)
    report |= {"gpus": gpus, "world": world, "peak_bf16_tflops_per_gpu": peak,
               "mfu_goal": common.MFU_GOAL, "allow_cpu": args.allow_cpu and not cuda}
    errors: dict[str, str] = {}
    report["errors"] = errors
    work = args.work or Path(tempfile.mkdtemp(prefix="mixray-gpu-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if cuda:
            report["matmul_bf16_tflops"] = round(common.matmul_tflops(), 1)
        model_dir = work / "model"
        built = common.build_model(model_dir, args.size, "cuda" if cuda else "cpu")
        report["model"] = built
        rows = synthetic_rows(args.rows, args.max_length)
        manifest = work / "manifest.parquet"
        pq.write_table(pa.Table.from_pylist(rows), manifest)
        train = {"dtype": "bf16", "micro_batch_size": args.micro,
                 "gradient_accumulation_steps": args.accum, "max_steps": args.steps,
                 "lr": args.lr, "lr_schedule": "constant", "packing": "greedy",
                 "max_length": args.max_length, "overlong": "truncate",
                 "max_dropped_fraction": 0.0, "seed": 0}
        t = TrainConfig.model_validate(train | {"num_workers": world})  # as the loop reads it
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        examples, _, _ = build_examples(
            tokenizer, rows, system=t.system_prompt, max_length=t.max_length,
            overlong=t.overlong, max_dropped_fraction=t.max_dropped_fraction,
            pools=["long", "short"])
        units = make_units(examples, t.packing, t.max_length)
        tokens = step_tokens([len(e.input_ids) for e in examples],
                             [sum(x != IGNORE for x in e.labels) for e in examples], units,
                             world, t.micro_batch_size, t.accumulation, args.steps)
        report["train"] = train | {"units": len(units), "rows": len(rows), "world": world}
        for zero in args.zero_stages:
            key = f"zero{zero}"
            try:  # the other stage still runs: both outcomes are reported
                report[key], problems = run_stage(zero, args, work, model_dir, manifest, train,
                                                  tokens, built, world, peak)
                if problems:
                    errors[key] = "; ".join(problems)
            except Exception as e:
                log.exception("ZeRO-%d failed", zero)
                errors[key] = f"{type(e).__name__}: {e}"
                continue
            try:
                report[key]["reload"] = reload_check(Path(report[key]["student"]), model_dir,
                                                     built)
            except Exception as e:
                log.exception("ZeRO-%d: reloading the student failed", zero)
                errors[f"{key}_reload"] = f"{type(e).__name__}: {e}"
        ran = [report[f"zero{z}"] for z in args.zero_stages
               if f"zero{z}" in report and f"zero{z}" not in errors]
        if len(ran) > 1:
            first = [r["losses"][0] for r in ran]
            report["first_loss_spread"] = round((max(first) - min(first)) / min(first), 5)
            if report["first_loss_spread"] > FIRST_LOSS_RTOL:
                errors["zero_agreement"] = (f"step-1 losses {first} differ by more than "
                                            f"{FIRST_LOSS_RTOL:.0%} across ZeRO stages")
        try:
            student = Path(ran[0]["student"]) if ran else model_dir
            report["hf_generate"] = generate_check(student, args.gen_batch, args.gen_tokens)
        except Exception as e:
            log.exception("HF generate failed")
            errors["hf_generate"] = f"{type(e).__name__}: {e}"
    except Exception as e:
        log.exception("the loop half failed")
        errors["setup"] = f"{type(e).__name__}: {e}"
    if not common.finish(report, errors, args.out, work, args.work is not None, started):
        return 1
    summary = {f"zero{z}": {k: report[f"zero{z}"][k] for k in ("tokens_per_s", "mfu_6nt",
                                                               "mfu_model")}
               for z in args.zero_stages}  # every stage ran without error to come here
    print(f"loop half passed in {report['wall_s']} s: {json.dumps(summary)}; HF generate "
          f"{report['hf_generate']['tokens_per_s']} tokens/s; {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
