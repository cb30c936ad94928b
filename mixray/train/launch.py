"""Launch the SFT loop on a Ray Train TorchTrainer (gloo on CPU) and return the exported student."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mixray.train.loop import LoopArgs, train_loop_per_worker

log = logging.getLogger(__name__)


def train_student(
    args: LoopArgs,
    *,
    num_workers: int,
    cpus_per_worker: float,
    storage: Path,
    name: str,
    callbacks: list | None = None,
) -> tuple[Path, list[dict]]:
    """Fit; return (HF folder of the trained student, per-step history)."""
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
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=0),
            callbacks=callbacks or [],
        ),
    )
    result = trainer.fit()
    assert result.checkpoint is not None, "the loop reports its export as the final checkpoint"
    ckpt = Path(result.checkpoint.path)
    history = json.loads((ckpt / "history.json").read_text())
    log.info("train %s: %d steps, final loss %.4f", name, len(history), history[-1]["train_loss"])
    return ckpt / "model", history
