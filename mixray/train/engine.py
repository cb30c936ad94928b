"""The DeepSpeed engine the loop drives: model (optionally with peft LoRA adapters), AdamW,
cosine-with-warmup schedule, ZeRO config; and the export of the student as a plain HF folder.

With LoRA the base weights are frozen and only the adapters are in the optimizer; checkpoints
leave the frozen weights out (a resumed run reloads them from the model path), and the export is
the base with the adapters merged in, so evaluation never needs peft.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from mixray.train.args import LoopArgs

if TYPE_CHECKING:
    from mixray.train.config import LoraConfig

log = logging.getLogger(__name__)

# DeepSpeed's CPU accelerator compiles a shared-memory all-reduce op (deepspeed_shm_comm) on first
# use: 50-125 s on 2 cores, under a file lock that a killed build leaves behind (every later build
# then waits on it forever), and each rank maps a 66 MB segment in /dev/shm and spins until every
# peer's exists. The op serves only DeepSpeed-inference's tensor-parallel all-reduce; training's
# gradients go through torch.distributed (gloo). Marking it incompatible skips all of that
# (deepspeed.comm.torch.build_shm_op returns None); on GPUs DeepSpeed never builds it.
SHM_COMM_OP = "deepspeed_shm_comm"


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed from compiling and initialising its CPU shared-memory comm op."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return  # nothing to skip, and the dict below probes every op (compilers, GPUs) when read
    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False  # a module-level dict, read at init


def deepspeed_config(a: LoopArgs, world: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": a.train.micro_batch_size,
        "gradient_accumulation_steps": a.train.accumulation,
        "train_batch_size": a.train.micro_batch_size * world * a.train.accumulation,
        "gradient_clipping": a.train.max_grad_norm,
        "zero_optimization": {"stage": a.train.zero_stage},
        "bf16": {"enabled": a.train.dtype == "bf16"},
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
    if a.train.max_steps is not None:
        return a.train.max_steps
    assert a.train.epochs is not None, "TrainConfig requires epochs or max_steps"
    per_step = a.train.micro_batch_size * world * a.train.accumulation
    return max(1, math.ceil(a.train.epochs * n_units / per_step))


def with_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """The model wrapped by peft: adapters on lora.target_modules, every other weight frozen."""
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM"))


def build_engine(a: LoopArgs, world: int, total: int) -> tuple[deepspeed.DeepSpeedEngine, dict]:
    """(engine, {"trainable": n, "total": n} parameter counts, taken before ZeRO-3 shards them)."""
    skip_shm_comm_op()
    model = AutoModelForCausalLM.from_pretrained(a.model_path, dtype=torch.float32)
    if a.train.gradient_checkpointing:
        # non-reentrant: works with frozen embeddings (LoRA), whose outputs need no grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if a.train.lora is not None:
        model = with_lora(model, a.train.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    counts = {"trainable": sum(p.numel() for p in trainable),
              "total": sum(p.numel() for p in model.parameters())}
    log.info("parameters: %d trainable of %d (%s)", counts["trainable"], counts["total"],
             "LoRA" if a.train.lora else "full fine-tuning")
    # the usual convention: no weight decay on biases and norm weights (1-D tensors); LoRA has
    # none of those, and an empty group would give DeepSpeed an empty flat buffer to shard
    decay = a.train.weight_decay
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=a.train.lr,
                                  betas=tuple(a.train.adam_betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, a.train.warmup_ratio, a.train.lr_schedule))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                      config=deepspeed_config(a, world))
    return engine, counts


def export_hf(engine: deepspeed.DeepSpeedEngine, tokenizer, out: Path, a: LoopArgs) -> None:
    """Rank 0 writes a plain HF folder. ZeRO-3 shards the weights, so every rank takes part in
    gathering them layer by layer into rank 0's memory (what accelerate does for ZeRO-3); with
    LoRA only the adapters are gathered and merged into a fresh copy of the base."""
    lora = a.train.lora is not None
    if a.train.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=lora)
    else:
        keep = _trainable_names(engine.module) if lora else None
        state = {k: v for k, v in engine.module.state_dict().items() if keep is None or k in keep}
    if dist.get_rank() != 0:
        return
    if lora:
        _merged(a, state).save_pretrained(out)
    else:
        engine.module.save_pretrained(out, state_dict=state)
    tokenizer.save_pretrained(out)


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _merged(a: LoopArgs, adapters: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The base from the model path plus the trained adapters, merged into plain Linear layers."""
    assert a.train.lora is not None
    # the dtype the full fine-tuning export would have (DeepSpeed's bf16 mode trains bf16 weights)
    dtype = torch.bfloat16 if a.train.dtype == "bf16" else torch.float32
    model = with_lora(AutoModelForCausalLM.from_pretrained(a.model_path, dtype=dtype), a.train.lora)
    missing, unexpected = model.load_state_dict(adapters, strict=False)
    assert not unexpected and _trainable_names(model).isdisjoint(missing), \
        f"adapter weights do not match the model: {unexpected or missing}"
    return model.merge_and_unload()
