"""The one SFT loop: DeepSpeed over a torch model, one optimizer step per global batch of units.

Runs on every Ray Train worker (TorchTrainer has set up the gloo/NCCL process group). A step is
`accumulation` micro-batches per rank; which manifest units each one holds is a function of the
step (`batch_indices`), so a run resumed from a DeepSpeed checkpoint sees exactly the data an
uninterrupted run would. Rank 0's metrics (loss overall and per pool, lr, tokens/s) are what
Tune sees. Checkpoints: every rank saves its shard into its own folder and reports it; Ray merges
the ranks' files into one checkpoint. The last one also holds the student as a plain HF folder
and the per-step history.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import deepspeed
import pyarrow.parquet as pq
import ray.train
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from mixray import logs
from mixray.train.data import (
    IGNORE,
    batch_indices,
    build_examples,
    collate_units,
    make_units,
    real_tokens,
)
from mixray.train.loss import forward_inputs, pool_sums, token_losses

log = logging.getLogger(__name__)

# Ray Train V2 collects reports by polling the workers every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S):
# a worker that dies sooner after reporting loses that report, so the test crash waits 3 polls.
TEST_CRASH_DELAY_S = 6.0


@dataclass(frozen=True)
class LoopArgs:
    model_path: str
    manifest_path: str
    system_prompt: str
    zero_stage: int
    dtype: str
    micro_batch_size: int
    accumulation: int
    max_steps: int | None
    epochs: float | None
    lr: float
    lr_schedule: str
    warmup_ratio: float
    weight_decay: float
    adam_betas: tuple[float, float]
    max_grad_norm: float
    gradient_checkpointing: bool
    max_length: int
    overlong: str
    max_dropped_fraction: float
    packing: str
    checkpoint_every: int | None
    seed: int
    torch_threads: int
    # Test-only hook: on its first attempt (the marker file does not exist yet), the last rank
    # creates the marker and dies with os._exit(1) before this step, to exercise resumption.
    test_crash_step: int | None = None
    test_crash_marker: str | None = None


def deepspeed_config(a: LoopArgs, world: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": a.micro_batch_size,
        "gradient_accumulation_steps": a.accumulation,
        "train_batch_size": a.micro_batch_size * world * a.accumulation,
        "gradient_clipping": a.max_grad_norm,
        "zero_optimization": {"stage": a.zero_stage},
        "bf16": {"enabled": a.dtype == "bf16"},
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW: no CUDA/C++ op to build
        "steps_per_print": 10**9,
    }


def lr_factor(step: int, total: int, warmup_ratio: float, schedule: str) -> float:
    """Linear warmup over round(warmup_ratio * total) steps, then cosine to 0 (or constant).
    Step 0 of a no-warmup run trains at the full lr (the paper: cosine, no warmup)."""
    warm = round(warmup_ratio * total)
    if step < warm:
        return (step + 1) / (warm + 1)
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def total_steps(a: LoopArgs, n_units: int, world: int) -> int:
    if a.max_steps is not None:
        return a.max_steps
    assert a.epochs is not None, "TrainConfig requires epochs or max_steps"
    return max(1, math.ceil(a.epochs * n_units / (a.micro_batch_size * world * a.accumulation)))


def train_loop_per_worker(config: dict) -> None:
    a = LoopArgs(**config)
    logs.configure()
    torch.set_num_threads(a.torch_threads)
    torch.manual_seed(a.seed)
    rank, world = dist.get_rank(), dist.get_world_size()

    tokenizer = AutoTokenizer.from_pretrained(a.model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples, units, pools, stats = _load_data(a, tokenizer)
    total = total_steps(a, len(units), world)
    engine = _engine(a, world, total)
    step, history = _resume(engine)
    first = step  # where this attempt started: > 0 after a restart from a checkpoint
    log.info("rank %d: %d units, %d steps, starting at step %d", rank, len(units), total, step)

    while step < total:
        _maybe_crash(a, rank, step)
        started, lr = time.perf_counter(), engine.get_lr()[0]
        batches = [collate_units(examples, [units[i] for i in batch_indices(
            step * a.accumulation + m, rank, world, a.micro_batch_size, len(units))], pad_id,
            a.packing) for m in range(a.accumulation)]
        # Weigh every loss token of the global batch alike: DeepSpeed divides by accumulation
        # and averages over ranks, so scale each micro-batch's loss sum by world * accum / tokens.
        n_tokens = _global_loss_tokens(batches)
        sums = torch.zeros(len(pools), 2, dtype=torch.float64)
        for batch in batches:
            losses, mask = token_losses(engine(**forward_inputs(batch)).logits, batch["labels"])
            engine.backward(losses.sum() * world * a.accumulation / n_tokens.clamp(min=1))
            engine.step()
            sums += pool_sums(losses, mask, batch["pool_ids"], len(pools))
        step += 1
        history.append(_metrics(step, sums, batches, lr, started, pools, len(units), a, world)
                       | {"resumed_at": first})
        _report(engine, tokenizer, a, history, final=step == total, stats=stats.as_dict())


def _global_loss_tokens(batches: list[dict]) -> torch.Tensor:
    """Tokens with a loss in this step's global batch (all micro-batches, all ranks)."""
    n = torch.tensor(float(sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)))
    dist.all_reduce(n)
    return n


def _load_data(a: LoopArgs, tokenizer):
    table = pq.read_table(a.manifest_path)
    rows = table.select([c for c in ("prompt", "completion", "pool") if c in table.column_names])
    pools = sorted(set(table["pool"].to_pylist())) if "pool" in table.column_names else ["all"]
    examples, where, stats = build_examples(
        tokenizer, rows.to_pylist(), system=a.system_prompt, max_length=a.max_length,
        overlong=a.overlong, max_dropped_fraction=a.max_dropped_fraction, pools=pools)
    phases = None
    if "phase" in table.column_names:
        all_phases = table["phase"].to_pylist()
        phases = [all_phases[i] for i in where]
    return examples, make_units(examples, a.packing, a.max_length, phases), pools, stats


def _engine(a: LoopArgs, world: int, total: int):
    model = AutoModelForCausalLM.from_pretrained(a.model_path, dtype=torch.float32)
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # the usual convention: no weight decay on biases and norm weights (1-D tensors)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=a.lr, betas=tuple(a.adam_betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, a.warmup_ratio, a.lr_schedule))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                      config=deepspeed_config(a, world))
    return engine


def _resume(engine) -> tuple[int, list[dict]]:
    """(step to start at, history so far) from Ray Train's latest checkpoint, if any."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as d:
        _, client = engine.load_checkpoint(d)  # the tag in d/latest; optimizer and lr schedule too
        history = json.loads((Path(d) / "history.json").read_text())
    assert client["step"] == len(history), "checkpoint step and history disagree"
    log.info("resumed from %s at step %d", checkpoint.path, client["step"])
    return client["step"], history


def _maybe_crash(a: LoopArgs, rank: int, step: int) -> None:
    if a.test_crash_marker is None or step != a.test_crash_step:
        return
    marker = Path(a.test_crash_marker)
    if rank == dist.get_world_size() - 1 and not marker.exists():
        marker.write_text(f"crashed at step {step}\n")
        time.sleep(TEST_CRASH_DELAY_S)
        log.warning("test hook: rank %d exits at step %d", rank, step)
        os._exit(1)


def _metrics(step: int, sums: torch.Tensor, batches: list[dict], lr: float, started: float,
             pools: list[str], n_units: int, a: LoopArgs, world: int) -> dict:
    """Global metrics of one step (summed over ranks), the same on every rank."""
    cells = sum(b["input_ids"].numel() for b in batches)
    real = sum(real_tokens(b) for b in batches)
    flat = torch.cat([sums.flatten(), torch.tensor([float(real), float(cells)], dtype=torch.float64)])
    dist.all_reduce(flat)
    per_pool, (real, cells) = flat[:-2].view(-1, 2), flat[-2:].tolist()
    elapsed = time.perf_counter() - started
    metrics = {"step": step, "train_loss": float(per_pool[:, 0].sum() / per_pool[:, 1].sum()),
               "lr": lr, "tokens_per_s": real / elapsed, "real_token_share": real / cells,
               "epoch": step * a.micro_batch_size * world * a.accumulation / n_units}
    for name, (loss, count) in zip(pools, per_pool.tolist()):
        if count:
            metrics[f"train_loss/{name}"] = loss / count
    return metrics


def _report(engine, tokenizer, a: LoopArgs, history: list[dict], *, final: bool,
            stats: dict) -> None:
    """Report this step's metrics; on checkpoint steps and the last one, with a checkpoint."""
    step = history[-1]["step"]
    if not final and not (a.checkpoint_every and step % a.checkpoint_every == 0):
        ray.train.report(history[-1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=f"step{step}", client_state={"step": step})
        if final:
            _export_hf(engine, tokenizer, Path(tmp) / "model", a.zero_stage)
        if dist.get_rank() == 0:
            (Path(tmp) / "history.json").write_text(json.dumps(history))
            (Path(tmp) / "loop_args.json").write_text(json.dumps(asdict(a)))
            (Path(tmp) / "data_stats.json").write_text(json.dumps(stats))
        ray.train.report(history[-1], checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _export_hf(engine, tokenizer, out: Path, zero_stage: int) -> None:
    """Rank 0 writes a plain HF folder. ZeRO-3 shards the weights, so every rank takes part in
    gathering them layer by layer into rank 0's memory (what accelerate does for ZeRO-3)."""
    state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    if dist.get_rank() == 0:
        engine.module.save_pretrained(out, state_dict=state)
        tokenizer.save_pretrained(out)
