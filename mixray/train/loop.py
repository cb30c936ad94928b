"""The one SFT loop: DeepSpeed over a torch model, one optimizer step per global batch of units.

Runs on every rank of a process group someone else set up: Ray Train's TorchTrainer
(`launch.py`) or torchrun (`__main__.py`). What differs between them, where metrics and
checkpoints go and where a restart resumes from, is the `Reporter` the launcher passes in.
A step is `accumulation` micro-batches per rank; which manifest units each one holds is a
function of the step (`batch_indices`), so a run resumed from a DeepSpeed checkpoint sees exactly
the data an uninterrupted run would. Metrics (loss overall and per pool, lr, tokens/s) are reduced
over ranks. With a validation set (mix.validation_problems), val_loss every eval_every steps, at
the rungs a Tune scheduler judges (eval_steps) and at the end. Checkpoints: every rank saves its
shard into its own folder and reports it; the reporter merges the ranks' files. The last one also
holds the student as a plain HF folder, the per-step history and the parameter counts.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from transformers import AutoTokenizer

from mixray import logs
from mixray.train.args import LoopArgs
from mixray.train.data import (
    IGNORE,
    batch_indices,
    build_examples,
    collate_units,
    make_units,
    real_tokens,
    to_device,
)
from mixray.train.engine import build_engine, export_hf, total_steps
from mixray.train.loss import model_losses, pool_sums
from mixray.train.reporting import Reporter
from mixray.train.validation import Validation

log = logging.getLogger(__name__)

def train(a: LoopArgs, reporter: Reporter) -> None:
    """Train on this rank until the last step, resuming from the reporter's checkpoint."""
    logs.configure()
    torch.set_num_threads(a.torch_threads)
    torch.manual_seed(a.train.seed)
    rank, world = dist.get_rank(), dist.get_world_size()

    tokenizer = AutoTokenizer.from_pretrained(a.model_path)
    pad_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
              else tokenizer.eos_token_id)
    examples, units, pools, stats = _load_data(a, tokenizer)
    total = total_steps(a, len(units), world)
    validation = None if a.validation_path is None else Validation.load(
        a.validation_path, tokenizer, system=a.train.system_prompt, max_length=a.train.max_length,
        overlong=a.train.overlong, max_dropped_fraction=a.train.max_dropped_fraction,
        micro_batch_size=a.train.micro_batch_size, pad_id=pad_id, responses=a.train.responses)
    engine, params = build_engine(a, world, total)
    step, history = _resume(engine, reporter, a)
    first, t0 = step, time.perf_counter()  # first > 0 after a restart from a checkpoint
    log.info("rank %d: %d units, %d steps, starting at step %d", rank, len(units), total, step)

    while step < total:
        started, lr = time.perf_counter(), engine.get_lr()[0]
        batches = [to_device(collate_units(examples, [units[i] for i in batch_indices(
            step * a.train.accumulation + m, rank, world, a.train.micro_batch_size, len(units))],
            pad_id, a.train.packing), engine.device) for m in range(a.train.accumulation)]
        # Weigh every loss token of the global batch alike: DeepSpeed divides by accumulation
        # and averages over ranks, so scale each micro-batch's loss sum by world * accum / tokens.
        n_tokens = _global_loss_tokens(batches)
        sums = torch.zeros(len(pools), 2, dtype=torch.float64)
        for batch in batches:
            losses, mask = model_losses(engine, batch)  # the head in chunks: no full fp32 logits
            engine.backward(losses.sum() * world * a.train.accumulation / n_tokens.clamp(min=1))
            engine.step()
            sums += pool_sums(losses, mask, batch["pool_ids"], len(pools)).cpu()
        step += 1
        # wall_s: this attempt's loop time so far, reports included (steps/s per launcher)
        history.append(_metrics(step, sums, batches, lr, started, pools, len(units), a, world)
                       | {"resumed_at": first, "wall_s": time.perf_counter() - t0})
        final = step == total
        if validation is not None and (final or step in a.eval_steps
                                       or (a.train.eval_every and step % a.train.eval_every == 0)):
            history[-1] |= validation.losses(engine)
        if final or (a.train.checkpoint_every and step % a.train.checkpoint_every == 0):
            _checkpoint(engine, tokenizer, a, reporter, history, final=final,
                        extra={"data_stats": stats.as_dict(), "params": params})
        else:
            reporter.report(history[-1])


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
        tokenizer, rows.to_pylist(), system=a.train.system_prompt, max_length=a.train.max_length,
        overlong=a.train.overlong, max_dropped_fraction=a.train.max_dropped_fraction, pools=pools,
        responses=a.train.responses)
    phases = None
    if "phase" in table.column_names:
        all_phases = table["phase"].to_pylist()
        phases = [all_phases[i] for i in where]
    return examples, make_units(examples, a.train.packing, a.train.max_length, phases), pools, stats


def _resume(engine, reporter: Reporter, a: LoopArgs) -> tuple[int, list[dict]]:
    """(step to start at, history so far) from the reporter's latest checkpoint, if any."""
    with reporter.latest_checkpoint() as d:
        if d is None:
            return 0, []
        # the tag in d/latest; optimizer and lr schedule too. A LoRA checkpoint has no frozen
        # base weights (they come from the model path), so the module load is not strict.
        _, client = engine.load_checkpoint(d, load_module_strict=a.train.lora is None)
        history = json.loads((Path(d) / "history.json").read_text())
    assert client["step"] == len(history), "checkpoint step and history disagree"
    log.info("resumed from %s at step %d", d, client["step"])
    return client["step"], history


def _metrics(step: int, sums: torch.Tensor, batches: list[dict], lr: float, started: float,
             pools: list[str], n_units: int, a: LoopArgs, world: int) -> dict:
    """Global metrics of one step (summed over ranks), the same on every rank."""
    cells = sum(b["input_ids"].numel() for b in batches)
    real = sum(real_tokens(b) for b in batches)
    flat = torch.cat([sums.flatten(),
                      torch.tensor([float(real), float(cells)], dtype=torch.float64)])
    dist.all_reduce(flat)
    per_pool, (real, cells) = flat[:-2].view(-1, 2), flat[-2:].tolist()
    elapsed = time.perf_counter() - started
    metrics = {"step": step, "train_loss": float(per_pool[:, 0].sum() / per_pool[:, 1].sum()),
               "lr": lr, "tokens_per_s": real / elapsed, "real_token_share": real / cells,
               "epoch": step * a.train.micro_batch_size * world * a.train.accumulation / n_units}
    for name, (loss, count) in zip(pools, per_pool.tolist()):
        if count:
            metrics[f"train_loss/{name}"] = loss / count
    return metrics


def _checkpoint(engine, tokenizer, a: LoopArgs, reporter: Reporter, history: list[dict], *,
                final: bool, extra: dict[str, dict]) -> None:
    """Report this step's metrics with a checkpoint; the last one also holds the HF student."""
    step = history[-1]["step"]
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=f"step{step}", client_state={"step": step},
                               exclude_frozen_parameters=a.train.lora is not None)
        if final:
            export_hf(engine, tokenizer, Path(tmp) / "model", a)
        if dist.get_rank() == 0:
            records = {"history": history, "loop_args": a.record()} | extra
            for name, content in records.items():
                (Path(tmp) / f"{name}.json").write_text(json.dumps(content))
        reporter.report(history[-1], checkpoint=Path(tmp))
