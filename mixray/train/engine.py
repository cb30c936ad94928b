"""The DeepSpeed engine the loop drives: model (optionally with peft LoRA adapters), AdamW,
cosine-with-warmup schedule, ZeRO config; and the export of the student as a plain HF folder.

With LoRA the base weights are frozen and only the adapters are in the optimizer; checkpoints
leave the frozen weights out (a resumed run reloads them from the model path), and the export is
the base with the adapters merged in, so evaluation never needs peft.

The model is loaded in the training dtype (bf16 weights under train.dtype bf16: DeepSpeed casts
them to that anyway). Under ZeRO-3 no rank allocates it whole: it is built inside
`deepspeed.zero.Init` (transformers' own ZeRO-3 path, `HfDeepSpeedConfig` alive around
`from_pretrained`), which partitions each module's parameters as soon as that module is built,
and the weights are copied in one module at a time: gathered, filled by rank 0 from the
memory-mapped safetensors (file pages in the file's dtype, in rank 0's RSS while mapped),
partitioned again. benchmarks/train_memory.py measures it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM

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


def deepspeed_config(a: LoopArgs, world: int, hidden: int | None = None) -> dict:
    """DeepSpeed's config; under ZeRO-3 with buffers scaled by the model's hidden size."""
    zero: dict[str, int] = {"stage": a.train.zero_stage}
    if a.train.zero_stage == 3 and hidden:
        zero |= zero3_buffers(hidden)
    return {
        "train_micro_batch_size_per_gpu": a.train.micro_batch_size,
        "gradient_accumulation_steps": a.train.accumulation,
        "train_batch_size": a.train.micro_batch_size * world * a.train.accumulation,
        "gradient_clipping": a.train.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": a.train.dtype == "bf16"},
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW: no CUDA/C++ op to build
        "steps_per_print": 10**9,
    }


def zero3_buffers(hidden: int) -> dict[str, int]:
    """ZeRO-3's gradient bucket, prefetch bucket and persistence threshold from the hidden size,
    the values transformers' Trainer fills in for "auto" (trainer_config_finalize). DeepSpeed's
    fixed defaults fit large models only: a 5e8-element reduce bucket is 1 GB of bf16 per rank
    (2 GB in fp32) however small the model; hidden^2 is 52 MB of bf16 at 32B (hidden 5120) and
    2 MB at SmolLM2-135M (576). On the train model of benchmarks/train_memory.py (54M
    parameters, hidden 1024, fp32, 2 ranks, 2 steps of 256 tokens) these took the training peak
    RSS per rank from 2.31-2.47 GB (DeepSpeed's defaults) to 1.97-2.05 GB."""
    return {"reduce_bucket_size": hidden * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden}


def hidden_size(model_path: str) -> int | None:
    """The model's hidden size from its config (a multimodal model's text config), if it has one."""
    config = AutoConfig.from_pretrained(model_path)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "hidden_size", None)


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


def model_dtype(a: LoopArgs) -> torch.dtype:
    return torch.bfloat16 if a.train.dtype == "bf16" else torch.float32


def load_model(a: LoopArgs, ds_config: dict) -> torch.nn.Module:
    """The model at a.model_path in the training dtype; under ZeRO-3 partitioned as it is built.

    transformers keeps only a weak reference to the HfDeepSpeedConfig and reads it in
    from_pretrained (modeling_utils: `is_deepspeed_zero3_enabled` -> `deepspeed.zero.Init`, then
    `_load_state_dict_into_zero3_model`), so the object lives exactly as long as the load. It is
    unset after: with it set, rank 0's plain `from_pretrained` of the export (`_merged`) would
    enter zero.Init alone and wait for the other ranks forever.
    """
    if a.train.zero_stage != 3:
        return AutoModelForCausalLM.from_pretrained(a.model_path, dtype=model_dtype(a))
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    # zero.Init reads the world size from deepspeed.comm, which deepspeed.initialize would only
    # set up later: without it, it counts 1 rank and refuses the batch sizes. The launcher's
    # torch.distributed group is adopted as it is (as deepspeed.initialize does).
    deepspeed.init_distributed()
    zero3 = HfDeepSpeedConfig(ds_config)
    try:
        model = AutoModelForCausalLM.from_pretrained(a.model_path, dtype=model_dtype(a))
    finally:
        unset_hf_deepspeed_config()
        del zero3
    log.info("ZeRO-3: rank %d built its partition by zero.Init: %d of %d elements",
             dist.get_rank(), sum(getattr(p, "ds_tensor", p).numel() for p in model.parameters()),
             sum(numel(p) for p in model.parameters()))
    return model


def numel(p: torch.nn.Parameter) -> int:
    """Elements of the whole parameter, also once zero.Init has partitioned it (its data is
    then an empty placeholder and the full shape is `ds_shape`)."""
    return getattr(p, "ds_numel", p.numel())


def ndim(p: torch.nn.Parameter) -> int:
    return len(getattr(p, "ds_shape", p.shape))


def build_engine(a: LoopArgs, world: int, total: int) -> tuple[deepspeed.DeepSpeedEngine, dict]:
    """(engine, {"trainable": n, "total": n} parameter counts of the whole, unpartitioned model)."""
    skip_shm_comm_op()
    hidden = hidden_size(a.model_path) if a.train.zero_stage == 3 else None
    config = deepspeed_config(a, world, hidden)
    model = load_model(a, config)
    if a.train.gradient_checkpointing:
        # non-reentrant: works with frozen embeddings (LoRA), whose outputs need no grad, and
        # under ZeRO-3, whose hooks gather a layer's weights again for the recomputation
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert model.is_gradient_checkpointing, "the model ignored gradient checkpointing"
    if a.train.lora is not None:
        model = with_lora(model, a.train.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    counts = {"trainable": sum(numel(p) for p in trainable),
              "total": sum(numel(p) for p in model.parameters())}
    log.info("parameters: %d trainable of %d (%s)", counts["trainable"], counts["total"],
             "LoRA" if a.train.lora else "full fine-tuning")
    # the usual convention: no weight decay on biases and norm weights (1-D tensors); LoRA has
    # none of those, and an empty group would give DeepSpeed an empty flat buffer to shard
    decay = a.train.weight_decay
    groups = [{"params": [p for p in trainable if ndim(p) >= 2], "weight_decay": decay},
              {"params": [p for p in trainable if ndim(p) < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=a.train.lr,
                                  betas=tuple(a.train.adam_betas))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, a.train.warmup_ratio, a.train.lr_schedule))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                      config=config)
    share_fp32_master(engine)
    return engine, counts


def share_fp32_master(engine: deepspeed.DeepSpeedEngine) -> int:
    """Under ZeRO-3 in fp32, let the optimizer update the weights' own partition; bytes freed.

    DeepSpeed 0.19.8 means to skip the fp32 master copy when the partitioned weights already are
    fp32 on the optimizer's device (stage3.py `_create_fp32_partitions`, "we don't need another
    copy of the weights", deepspeedai/DeepSpeed#7651), but compares a torch.device with the
    string `current_device_name()` ("cpu", "cuda:0"), which is never equal, and clones them: 4
    more bytes per parameter / ranks, so ZeRO-3 held 16 / ranks bytes per parameter against
    ZeRO-0's 12 (0.67 of it at 2 ranks instead of 0.5). Pointing the master at the weights'
    storage is the state that branch creates; the step's copy back into the weights then copies
    onto itself. Nothing changes where the copy is needed (bf16 weights, an offloaded optimizer).
    """
    opt = engine.optimizer
    freed = 0
    for low, high in zip(getattr(opt, "fp16_partitioned_groups_flat", []),
                         getattr(opt, "fp32_partitioned_groups_flat", [])):
        if (low.dtype == high.dtype and low.device == high.device and low.numel() == high.numel()
                and low.data_ptr() != high.data_ptr()):  # a clone of the weights, never updated yet
            freed += high.numel() * high.element_size()
            high.data = low.data  # the same tensor object: Adam's state, keyed by it, stays
    if freed:
        log.info("ZeRO-3: fp32 weights are their own master copy (%.1f MB freed on rank %d)",
                 freed / 1e6, dist.get_rank())
    return freed


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
    model = with_lora(AutoModelForCausalLM.from_pretrained(a.model_path, dtype=model_dtype(a)),
                      a.train.lora)
    missing, unexpected = model.load_state_dict(adapters, strict=False)
    assert not unexpected and _trainable_names(model).isdisjoint(missing), \
        f"adapter weights do not match the model: {unexpected or missing}"
    return model.merge_and_unload()
