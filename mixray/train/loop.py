"""The one SFT loop: DeepSpeed over a torch model, one step per global batch of manifest rows.

Runs on every Ray Train worker (TorchTrainer has set up the gloo/NCCL process group). Rank 0
reports metrics each step — Tune's schedulers see them — and, at the end, exports the student
as a plain HF folder with its per-step history, reported as the run's checkpoint.
"""

from __future__ import annotations

import json
import logging
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
from mixray.train.data import batch_indices, collate, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopArgs:
    model_path: str
    manifest_path: str
    system_prompt: str
    zero_stage: int
    dtype: str
    micro_batch_size: int
    max_steps: int
    lr: float
    max_length: int
    seed: int
    torch_threads: int


def deepspeed_config(a: LoopArgs, world: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": a.micro_batch_size,
        "train_batch_size": a.micro_batch_size * world,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": a.zero_stage},
        "bf16": {"enabled": a.dtype == "bf16"},
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW: no CUDA/C++ op to build
        "steps_per_print": 10**9,
    }


def train_loop_per_worker(config: dict) -> None:
    a = LoopArgs(**config)
    logs.configure()
    torch.set_num_threads(a.torch_threads)
    torch.manual_seed(a.seed)
    rank, world = dist.get_rank(), dist.get_world_size()

    tokenizer = AutoTokenizer.from_pretrained(a.model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = pq.read_table(a.manifest_path, columns=["prompt", "completion"]).to_pylist()
    examples = [encode(tokenizer, a.system_prompt, r["prompt"], r["completion"], a.max_length)
                for r in rows]
    model = AutoModelForCausalLM.from_pretrained(a.model_path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      config=deepspeed_config(a, world))

    history, tokens_seen, start = [], 0, time.perf_counter()
    for step in range(a.max_steps):
        batch = collate([examples[i] for i in batch_indices(step, rank, world,
                                                            a.micro_batch_size, len(examples))],
                        pad_id)
        loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
        engine.backward(loss)
        engine.step()
        stats = torch.tensor([loss.item(), float(batch["attention_mask"].sum())])
        dist.all_reduce(stats)  # mean loss and total tokens over ranks
        tokens_seen += int(stats[1])
        elapsed = time.perf_counter() - start
        metrics = {"step": step + 1, "train_loss": float(stats[0]) / world,
                   "epoch": (step + 1) * world * a.micro_batch_size / len(examples),
                   "tokens_per_s": tokens_seen / elapsed}
        history.append(metrics)
        if step + 1 < a.max_steps:
            ray.train.report(metrics)
    _export(engine, tokenizer, a, history, rank)


def _export(engine, tokenizer, a: LoopArgs, history: list[dict], rank: int) -> None:
    """Rank 0 writes the HF folder; ZeRO-0/1/2 keep full weights on every rank, so it is complete."""
    assert a.zero_stage < 3, "ZeRO-3 export needs consolidation (not in this slice)"
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            out = Path(tmp) / "model"
            engine.module.save_pretrained(out)
            tokenizer.save_pretrained(out)
            (Path(tmp) / "history.json").write_text(json.dumps(history))
            (Path(tmp) / "loop_args.json").write_text(json.dumps(asdict(a)))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(history[-1], checkpoint=checkpoint)
