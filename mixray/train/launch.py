"""Launch the SFT loop on a Ray Train TorchTrainer (gloo on CPU) and return the exported student."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mixray.config import TrainConfig
from mixray.train.loop import LoopArgs, train_loop_per_worker

log = logging.getLogger(__name__)

# DeepSpeed checkpoints kept per run: the latest to resume from, and one before it in case the
# latest was cut short by the failure; each holds the optimizer state (about 3x the model).
KEEP_CHECKPOINTS = 2


def loop_args(t: TrainConfig, *, model_path: str, manifest_path: str, torch_threads: int,
              **test_hooks) -> LoopArgs:
    """The loop's arguments from the sweep's train section (test_hooks: LoopArgs.test_*)."""
    return LoopArgs(
        model_path=model_path, manifest_path=manifest_path, system_prompt=t.system_prompt,
        zero_stage=t.zero_stage, dtype=t.dtype, micro_batch_size=t.micro_batch_size,
        accumulation=t.accumulation, max_steps=t.max_steps, epochs=t.epochs, lr=t.lr,
        lr_schedule=t.lr_schedule, warmup_ratio=t.warmup_ratio, weight_decay=t.weight_decay,
        adam_betas=t.adam_betas, max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=t.gradient_checkpointing, max_length=t.max_length,
        overlong=t.overlong, max_dropped_fraction=t.max_dropped_fraction, packing=t.packing,
        checkpoint_every=t.checkpoint_every, seed=t.seed, torch_threads=torch_threads,
        **test_hooks,
    )


def train_from_config(t: TrainConfig, *, model_path: str, manifest_path: str, torch_threads: int,
                      cpus_per_worker: float, storage: Path, name: str,
                      callbacks: list | None = None, **test_hooks) -> tuple[Path, list[dict]]:
    """What a trial calls: the train section -> (HF folder of the student, per-step history)."""
    args = loop_args(t, model_path=model_path, manifest_path=manifest_path,
                     torch_threads=torch_threads, **test_hooks)
    return train_student(args, num_workers=t.num_workers, cpus_per_worker=cpus_per_worker,
                         storage=storage, name=name, callbacks=callbacks,
                         max_failures=t.max_failures)


def train_student(
    args: LoopArgs,
    *,
    num_workers: int,
    cpus_per_worker: float,
    storage: Path,
    name: str,
    callbacks: list | None = None,
    max_failures: int = 0,
) -> tuple[Path, list[dict]]:
    """Fit; return (HF folder of the trained student, per-step history).

    A failed worker group restarts up to max_failures times, resuming from the latest checkpoint.
    """
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(args),
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,  # unique per trial: the same name would silently resume an old run
            storage_path=str(storage),
            # controller_failure_limit=0: a worker group that cannot start fails, not retries forever
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            callbacks=callbacks or [],
        ),
    )
    result = trainer.fit()
    assert result.checkpoint is not None, "the loop reports its export as the final checkpoint"
    ckpt = Path(result.checkpoint.path)
    history = json.loads((ckpt / "history.json").read_text())
    stats = json.loads((ckpt / "data_stats.json").read_text())
    log.info("train %s: %d steps, final loss %.4f, data %s", name, len(history),
             history[-1]["train_loss"], stats)
    return ckpt / "model", history
