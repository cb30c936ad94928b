"""Training memory per rank: ZeRO-3 against ZeRO-0, 2 ranks on CPU, models built in code.

Every configuration runs under `torchrun --nproc-per-node 2` (gloo, one torch thread per rank),
one after the other so they never share the cores, in the same run; each rank measures itself.

- train: the engine (`mixray.train.engine.build_engine`, fp32, AdamW) and the loop's step
  (`model_losses`: the head in chunks, `engine.backward`, `engine.step`) for a few steps on
  random tokens, on a tiny-but-wide Llama (hidden 1024, 2 layers, MLP 2048, vocabulary 32,000,
  tied head: 53.8M parameters, 0.65 GB of fp32 weights + Adam moments on one ZeRO-0 rank).
  ``zero0`` is the baseline; ``zero3`` the engine as it builds ZeRO-3 (`deepspeed.zero.Init`
  through transformers). Per rank:
  ``params_optimizer_bytes``: the parameters as the module holds them (ZeRO-3: its partitions)
  plus the optimizer's own tensors (Adam moments, master copies where distinct), each storage
  counted once, after the last step; ``grad_bytes``: gradients just before the last
  `engine.step()`; ``peak_rss_build`` / ``peak_rss_train``: VmHWM while building the engine /
  during the steps (the high-water mark reset in between through /proc/self/clear_refs), beside
  ``rss_before_build`` (torch, DeepSpeed and transformers imported: about 0.63 GB).
  The pair runs twice: with glibc's default allocator, as the loop runs, and with
  MALLOC_MMAP_THRESHOLD_=1 MiB, which returns every freed buffer of 1 MiB or more to the
  system: ZeRO-3 gathers and frees each layer's weights twice a step, and with the default
  (a threshold that grows to 32 MiB) the freed 4-8 MiB buffers stay in the heap, fragmented.
- load: only the model load (`engine.load_model`) of a deep, narrow-vocabulary Llama (hidden
  1024, 8 layers, MLP 2816, vocabulary 2,048: 105M parameters, 0.42 GB in fp32, saved in bf16 as
  hub checkpoints are), ZeRO-3 through zero.Init (``load_zero3``) against the whole fp32 model on
  every rank first (``load_full``: what the engine did before issue 16). In the train model the
  embedding is 61% of the parameters, and zero.Init builds each module whole before
  partitioning it, so its load cannot show the difference; here the largest module is 3%.

Goal (issue 16): ZeRO-3's params+optimizer per rank <= 0.6 x ZeRO-0's at 2 ranks. The train
runs start from the same weights and see the same batches: their losses agree (checked). Memory
is not timing: one run per configuration. The largest configuration holds about 1.9-2.1 GB per
rank, 3.7 GB for both.

Measured (2026-12-01): params+optimizer 0.322 against 0.645 GB per rank (0.50), gradients 0.50.
Peak RSS does not halve at this size: 1.95-1.98 against 1.92-1.93 GB (1.01-1.03; up to 1.06 in
two earlier runs) with the default allocator, 1.64 against 1.80 GB (0.91 in every run) with the
1 MiB threshold.
What ZeRO-3 cannot partition is most of a rank here: the imports (0.63 GB), the activations,
and its own transients, which on a 2-layer model are whole-model sized: the tied embedding (61%
of the weights) is gathered whole for the lookup and for every head chunk, and its gradient
exists whole until it is reduce-scattered. Its build peak is above ZeRO-0's because DeepSpeed's ZeRO-3 optimizer runs an
empty step at init (AdamW's moments), which ZeRO-0 only allocates at the first step. Loading the
deep model: 0.21 GB of weights per rank instead of 0.42; peak RSS 0.70 (rank 1) and 0.86 (rank
0, which also reads the whole bf16 file through the page cache) of the whole load's with the
1 MiB threshold, 0.86-1.00 with the default allocator, whose heap keeps the freed buffers (how
many varies from run to run).

Writes benchmarks/results/train_memory.json:

    .venv/bin/python -m benchmarks.train_memory [--steps 3] [--seq 512]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("mixray.benchmarks.train_memory")
OUT = Path(__file__).parent / "results" / "train_memory.json"
REPO = Path(__file__).resolve().parents[1]
RANKS = 2
GOAL = 0.6  # ZeRO-3 / ZeRO-0 params+optimizer bytes per rank, at 2 ranks
LLAMA = {"num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 4096,
         "tie_word_embeddings": True, "hidden_size": 1024}
MODELS = {
    # wide: the embedding (and tied head) is 32.8M of 53.8M parameters, as in small students
    # (SmolLM2-135M: 28M of 135M); two ZeRO-0 ranks of it fit in 4 GB
    "train": LLAMA | {"vocab_size": 32000, "intermediate_size": 2048, "num_hidden_layers": 2},
    # deep: 8 layers of 12.9M parameters, a 2.1M embedding; loaded only, never trained
    "load": LLAMA | {"vocab_size": 2048, "intermediate_size": 2816, "num_hidden_layers": 8},
}
MMAP_1MIB = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
# name: (what the worker does, model, ZeRO stage, extra environment)
CONFIGS = {
    "zero0": ("train", "train", 0, {}),
    "zero3": ("train", "train", 3, {}),
    "zero0_mmap_1mib": ("train", "train", 0, MMAP_1MIB),
    "zero3_mmap_1mib": ("train", "train", 3, MMAP_1MIB),
    "load_full": ("load_full", "load", 3, {}),
    "load_zero3": ("load", "load", 3, {}),
    "load_full_mmap_1mib": ("load_full", "load", 3, MMAP_1MIB),
    "load_zero3_mmap_1mib": ("load", "load", 3, MMAP_1MIB),
}
TIMEOUT_S = 900


def make_model(name: str, folder: Path) -> None:
    """One of MODELS, seeded, as an HF folder in bf16 (as hub checkpoints come)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**MODELS[name])).to(torch.bfloat16).save_pretrained(folder)


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def _storages(tensors) -> dict[int, int]:
    """{storage address: bytes} of the distinct storages behind `tensors`."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in tensors if t is not None and t.untyped_storage().nbytes()}


def _param_storages(module) -> dict[int, int]:
    """The module's parameters as this rank holds them: ZeRO-3 partitions, or whole tensors."""
    return _storages([getattr(p, "ds_tensor", None) for p in module.parameters()]
                     + [p.data for p in module.parameters()])


def held_bytes(engine) -> dict[str, int]:
    """Parameter and optimizer bytes on this rank, each storage counted once."""
    import torch

    params = _param_storages(engine.module)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps a torch AdamW
    opt = [p for g in inner.param_groups for p in g["params"]]
    # ZeRO-3's fp32 masters: off param_groups between steps (set there only for the step)
    opt += list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))
    opt += [v for state in inner.state.values() for v in state.values()
            if isinstance(v, torch.Tensor) and v.numel() > 1]  # not the step counters
    optimizer = {k: v for k, v in _storages(opt).items() if k not in params}
    return {"param_bytes": sum(params.values()), "optimizer_bytes": sum(optimizer.values()),
            "params_optimizer_bytes": sum(params.values()) + sum(optimizer.values())}


def grad_bytes(engine) -> int:
    """Gradient bytes between backward and step: .grad (ZeRO-0) or ZeRO-3's partitions."""
    flat = getattr(engine.optimizer, "grad_partitions_flat_buffer", None)
    return sum(_storages([p.grad for p in engine.module.parameters()] + [flat]).values())


def _loop_args(model: Path, stage: int, args: argparse.Namespace, world: int):
    from mixray.train.args import LoopArgs
    from mixray.train.config import TrainConfig

    train = TrainConfig(zero_stage=stage, dtype="fp32", num_workers=world, micro_batch_size=1,
                        max_steps=args.steps, max_length=args.seq, lr=1e-4)
    return LoopArgs(train=train, model_path=str(model), manifest_path="", torch_threads=1)


def train_worker(a, rank: int, world: int, args: argparse.Namespace) -> dict:
    """Build the engine, train a few steps; this rank's numbers."""
    import torch

    from mixray.train.data import IGNORE
    from mixray.train.engine import build_engine
    from mixray.train.loss import model_losses

    before = _status()
    _reset_peak()
    started = time.perf_counter()
    engine, counts = build_engine(a, world, args.steps)
    build_s, built = time.perf_counter() - started, _status()
    _reset_peak()
    g = torch.Generator().manual_seed(1000 + rank)  # per-rank data, the same in every config
    vocab = MODELS["train"]["vocab_size"]
    losses_seen, grads = [], 0
    for step in range(args.steps):
        ids = torch.randint(0, vocab, (1, args.seq), generator=g)
        labels = ids.clone()
        labels[:, :args.prompt] = IGNORE  # a prompt without loss, as the loop's batches have
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        losses, mask = model_losses(engine, batch)
        loss = losses.sum() / mask.sum()
        engine.backward(loss)
        if step == args.steps - 1:
            grads = grad_bytes(engine)
        engine.step()
        losses_seen.append(float(loss.detach()))
    trained = _status()
    return {"parameters": counts["total"], "build_s": round(build_s, 1),
            "rss_before_build": before["VmRSS"], "peak_rss_build": built["VmHWM"],
            "peak_rss_train": trained["VmHWM"], "rss_after_train": trained["VmRSS"],
            "grad_bytes": grads, **held_bytes(engine), "losses": losses_seen}


def load_worker(a, whole: bool) -> dict:
    """Only the model load: zero.Init (the engine) or the whole fp32 model (before issue 16)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mixray.train import engine

    engine.skip_shm_comm_op()
    before = _status()
    _reset_peak()
    if whole:
        model = AutoModelForCausalLM.from_pretrained(a.model_path, dtype=torch.float32)
    else:
        model = engine.load_model(a, engine.deepspeed_config(a, RANKS,
                                                              engine.hidden_size(a.model_path)))
    loaded = _status()
    return {"parameters": sum(engine.numel(p) for p in model.parameters()),
            "rss_before_load": before["VmRSS"], "peak_rss_load": loaded["VmHWM"],
            "rss_after_load": loaded["VmRSS"],
            "param_bytes": sum(_param_storages(model).values())}


def worker(args: argparse.Namespace) -> None:
    """One rank of one configuration; writes rank<N>.json into --out."""
    import torch
    import torch.distributed as dist

    from mixray import logs

    logs.configure()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    kind, _, stage, _ = CONFIGS[args.worker]
    a = _loop_args(args.model, stage, args, world)
    result = (train_worker(a, rank, world, args) if kind == "train"
              else load_worker(a, whole=kind == "load_full"))
    Path(args.out, f"rank{rank}.json").write_text(json.dumps({"rank": rank} | result))
    dist.barrier()
    dist.destroy_process_group()


def run_config(name: str, models: dict[str, Path], work: Path, args: argparse.Namespace
               ) -> list[dict]:
    """One configuration under torchrun; the ranks' results, rank 0 first."""
    _, model, _, extra_env = CONFIGS[name]
    out = work / name
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(RANKS), "-m", "benchmarks.train_memory", "--worker", name,
           "--model", str(models[model]), "--out", str(out), "--steps", str(args.steps),
           "--seq", str(args.seq), "--prompt", str(args.prompt)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"} | extra_env
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {done.stdout[-2000:]}{done.stderr[-4000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(RANKS)]


def _per_rank(runs: dict[str, list[dict]], name: str, base: str, key: str) -> list[float]:
    return [round(r[key] / b[key], 3) for r, b in zip(runs[name], runs[base], strict=True)]


def _derive(runs: dict[str, list[dict]]) -> None:
    """Adds each run's peak above the RSS it started from (torch and the rest imported)."""
    for rs in runs.values():
        for r in rs:
            if "peak_rss_train" in r:
                r["peak_rss_above_imports"] = max(r["peak_rss_build"], r["peak_rss_train"]) \
                    - r["rss_before_build"]
            else:
                r["peak_rss_load_above_imports"] = r["peak_rss_load"] - r["rss_before_load"]


def summary(runs: dict[str, list[dict]]) -> dict:
    """Ratios per rank against the baselines, and the goal."""
    keys = ("params_optimizer_bytes", "grad_bytes", "peak_rss_train", "peak_rss_build",
            "peak_rss_above_imports")
    out = {f"{name}_over_{base}": {k: _per_rank(runs, name, base, k) for k in keys}
           for name, base in (("zero3", "zero0"), ("zero3_mmap_1mib", "zero0_mmap_1mib"))}
    for suffix in ("", "_mmap_1mib"):
        out[f"load_zero3{suffix}_over_load_full{suffix}"] = {
            k: _per_rank(runs, f"load_zero3{suffix}", f"load_full{suffix}", k)
            for k in ("param_bytes", "peak_rss_load", "peak_rss_load_above_imports")}
    worst = max(out["zero3_over_zero0"]["params_optimizer_bytes"])
    losses = [rs[0]["losses"] for n, rs in runs.items() if n.startswith("zero")]
    return out | {"goal_params_optimizer_ratio": GOAL, "params_optimizer_ratio_worst_rank": worst,
                  "meets_goal": worst <= GOAL,
                  "same_losses": all(max(abs(x - y) for x, y in zip(ls, losses[0])) <= 1e-4
                                     for ls in losses)}


def _gb(runs: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """The byte counts of every run in GB, rank by rank, for reading."""
    return {name: {k: [round(r[k] / 1e9, 3) for r in rs] for k in rs[0]
                   if k.endswith(("bytes", "rss_build", "rss_train", "rss_load", "imports"))
                   or k.startswith("rss_")}
            for name, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per train run")
    parser.add_argument("--seq", type=int, default=512, help="tokens per micro-batch (one row)")
    parser.add_argument("--prompt", type=int, default=32, help="leading tokens without loss")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--make-model", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.make_model:
        return make_model(args.make_model[0], Path(args.make_model[1]))
    from mixray import logs

    logs.configure()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mixray-bench-memory-") as tmp:
        work = Path(tmp)
        models = {name: work / f"model-{name}" for name in MODELS}
        for name, folder in models.items():  # in a child: the driver never holds torch
            subprocess.run([sys.executable, "-m", "benchmarks.train_memory", "--make-model",
                            name, str(folder)], check=True, cwd=REPO)
        for name in CONFIGS:
            runs[name] = run_config(name, models, work, args)
            log.info("%s: %s", name, [{k: v for k, v in r.items() if k != "losses"}
                                      for r in runs[name]])
    counts = {"train": runs["zero0"][0]["parameters"], "load": runs["load_full"][0]["parameters"]}
    params = counts["train"]
    _derive(runs)
    result = {
        "models": {name: spec | {"parameters": counts[name]} for name, spec in MODELS.items()},
        "ranks": RANKS, "dtype": "fp32", "optimizer": "torch AdamW", "steps": args.steps,
        "seq": args.seq, "prompt_tokens": args.prompt, "torch_threads": 1,
        # fp32 weights 4 + Adam moments 8 bytes per parameter: ZeRO-0's whole, ZeRO-3's / ranks
        "expected_params_optimizer_gb": {"zero0": round(12 * params / 1e9, 3),
                                         "zero3": round(12 * params / RANKS / 1e9, 3)},
        **summary(runs),
        "gb": _gb(runs),
        "runs": runs,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    log.info("training memory: %s", json.dumps({k: v for k, v in result.items()
                                                 if k not in ("runs", "gb")}))


if __name__ == "__main__":
    main()
