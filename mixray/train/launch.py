"""Launch the SFT loop on a Ray Train TorchTrainer and return the exported student.

Workers with GPUs train on them (NCCL for the model's collectives, gloo for the loop's small CPU
ones); without, everything is gloo on CPU.

`RayReporter` is the loop's `Reporter` here: metrics and checkpoints go to `ray.train.report`
(metrics at most once per controller poll, see REPORT_INTERVAL_S), and a restarted worker group
resumes from `ray.train.get_checkpoint()`. Every step's metrics also go to Prometheus through
`mixray.metrics` (rank 0), tagged with the student and trial of the process that launched the run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mixray import cluster, metrics
from mixray.disk import human_size, remove
from mixray.train.args import LoopArgs
from mixray.train.config import TrainConfig
from mixray.train.reporting import KEEP_CHECKPOINTS, Reporter

log = logging.getLogger(__name__)


# Train V2 hands a worker's reports to its controller through a queue of one that the controller
# polls every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): a loop that reports every step
# blocks in report() until the next poll. Measured (benchmarks/training.py, tiny model, 0.35 s
# steps, 2 cores): 0.49 steps/s under Ray against 2.8 under torchrun when every step reported,
# about 0.9x torchrun with this. So metrics-only reports go at most once per poll interval;
# checkpoint reports always go; every step's metrics stay in the history.
# Ray Train V2's worker-group start timeout (ray/train/v2/_internal/constants.py)
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
REPORT_INTERVAL_S = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))


class RayReporter:
    """The loop's Reporter under Ray Train: Ray merges the ranks' checkpoint folders into one.

    `always`: steps whose metrics go whatever the interval, the rungs where a Tune scheduler
    judges a trial (ASHA only sees the steps it is sent: with the interval alone, a fast loop
    reported steps 1 and 8 of 8 and was "stopped early" at its end). `tags`: the launching
    trial's `metrics.context()`, on every step's metrics (`metrics.record_train_step`)."""

    def __init__(self, interval_s: float = REPORT_INTERVAL_S,
                 always: frozenset[int] = frozenset(),
                 tags: dict[str, str] | None = None) -> None:
        self.interval_s = interval_s
        self.always = always
        self.tags = tags or {}
        self._last = -math.inf

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield Path(d)

    def report(self, step_metrics: dict, checkpoint: Path | None = None) -> None:
        if dist.get_rank() == 0:  # the metrics are global: one rank's series holds them all
            metrics.record_train_step(self.tags, step_metrics)
        if checkpoint is None and step_metrics["step"] not in self.always and not self._due():
            return
        self._last = time.monotonic()
        ray.train.report(step_metrics, checkpoint=None if checkpoint is None
                         else ray.train.Checkpoint.from_directory(checkpoint))

    def _due(self) -> bool:
        """Whether a metrics-only report goes now. Rank 0's clock decides for every rank: Ray pairs
        the ranks' i-th reports, so all ranks must report the same steps."""
        due = torch.tensor([time.monotonic() - self._last >= self.interval_s], dtype=torch.int32)
        dist.broadcast(due, src=0)
        return bool(due.item())


# Decorates a worker's Reporter; the only one is the tests' fault injection (train/faults.py)
WrapReporter = Callable[[Reporter], Reporter]


def train_loop_per_worker(config: dict) -> None:
    """What each TorchTrainer worker runs: the loop, reporting to Ray Train."""
    args: LoopArgs = config["args"]
    reporter: Reporter = RayReporter(always=frozenset(args.eval_steps),
                                     tags=config.get("metric_tags"))
    if config["wrap_reporter"] is not None:
        reporter = config["wrap_reporter"](reporter)
    # Imported here, in the worker: the loop brings DeepSpeed and transformers (5 s of imports
    # per process on 2 cores), which the trial's process that launches the workers never uses.
    from mixray.train.loop import train

    train(args, reporter)


def train_from_config(t: TrainConfig, *, model_path: str, manifest_path: str, torch_threads: int,
                      cpus_per_worker: float, storage: Path, name: str,
                      gpus_per_worker: float = 0.0, node_type: str | None = None,
                      callbacks: list | None = None, report_steps: list[int] | None = None,
                      validation_path: str | None = None,
                      wrap_reporter: WrapReporter | None = None,
                      start_timeout_s: float | None = None) -> tuple[Path, list[dict]]:
    """What a trial calls: the train section -> (HF folder of the student, per-step history).
    report_steps: steps whose metrics always reach Ray (a Tune scheduler's rungs), with the
    validation loss when there is a validation set. wrap_reporter: see train_student."""
    args = LoopArgs(train=t, model_path=model_path, manifest_path=manifest_path,
                    torch_threads=torch_threads, validation_path=validation_path,
                    eval_steps=tuple(report_steps or ()))
    return train_student(args, num_workers=t.num_workers, cpus_per_worker=cpus_per_worker,
                         gpus_per_worker=gpus_per_worker, storage=storage, name=name,
                         callbacks=callbacks, max_failures=t.max_failures,
                         wrap_reporter=wrap_reporter, node_type=node_type,
                         start_timeout_s=start_timeout_s)


def train_student(
    args: LoopArgs,
    *,
    num_workers: int,
    cpus_per_worker: float,
    storage: Path,
    name: str,
    callbacks: list | None = None,
    max_failures: int = 0,
    gpus_per_worker: float = 0.0,
    wrap_reporter: WrapReporter | None = None,
    node_type: str | None = None,
    start_timeout_s: float | None = None,
) -> tuple[Path, list[dict]]:
    """Fit; return (HF folder of the trained student, per-step history).

    A failed worker group restarts up to max_failures times, resuming from the latest checkpoint.
    wrap_reporter, called on every worker with its RayReporter, returns the Reporter the loop
    gets (tests: faults.CrashOnce); it travels to the workers pickled, so it must be importable
    there.
    """
    trainer = TorchTrainer(
        train_loop_per_worker,
        # Ray pickles the config to the workers: the TrainConfig inside args goes whole
        # metric_tags: this process's (a trial's) student and trial, for the workers' metrics
        train_loop_config={"args": args, "wrap_reporter": wrap_reporter,
                           "metric_tags": metrics.context()},
        # NCCL only takes CUDA tensors; the loop's step counts and report votes are CPU ones
        torch_config=TorchConfig(backend="cpu:gloo,cuda:nccl" if gpus_per_worker else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=gpus_per_worker > 0,
            resources_per_worker={"CPU": cpus_per_worker}
            | ({"GPU": gpus_per_worker} if gpus_per_worker else {})
            # the node type's marker (resources.node_types.train_workers)
            | ({node_type: cluster.NODE_TYPE_SHARE} if node_type else {}),
        ),
        run_config=RunConfig(
            name=name,  # unique per trial: the same name would silently resume an old run
            storage_path=str(storage),
            # controller_failure_limit=0: a worker group that cannot start fails, not retries
            # forever
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            callbacks=callbacks or [],
        ),
    )
    with worker_group_start_timeout(start_timeout_s):
        result = trainer.fit()
    assert result.checkpoint is not None, "the loop reports its export as the final checkpoint"
    ckpt = Path(result.checkpoint.path)
    history = json.loads((ckpt / "history.json").read_text())
    stats = json.loads((ckpt / "data_stats.json").read_text())
    log.info("train %s: %d steps, final loss %.4f, data %s", name, len(history),
             history[-1]["train_loss"], stats)
    return ckpt / "model", history


def keep_only_student(model_dir: Path) -> int:
    """For a finished run (train.keep_checkpoints: resume): delete its DeepSpeed state, keep the
    student. `model_dir` is what train_student returned, <storage>/<name>/<final checkpoint>/model:
    it and the final checkpoint's JSON records (history, params, data stats, loop args) stay where
    they are, so paths recorded by the evaluation still hold; the other checkpoints of the run and
    the rest of the final one (step<N>/ with the ZeRO shards, DeepSpeed's latest and scripts) go.
    Ray's own run state beside them (a few KB) stays. Returns the bytes freed."""
    final = model_dir.parent
    assert model_dir.name == "model" and final.name.startswith("checkpoint_"), model_dir
    doomed = [p for p in final.parent.iterdir()
              if p.is_dir() and p.name.startswith("checkpoint_") and p != final]
    doomed += [p for p in final.iterdir() if p != model_dir and p.suffix != ".json"]
    freed = sum(remove(p) for p in doomed)
    log.info("kept the student %s; freed %s of checkpoints", model_dir, human_size(freed))
    return freed


@contextmanager
def worker_group_start_timeout(seconds: float | None) -> Iterator[None]:
    """How long the worker group of the next fit() waits for its placement group (None: Ray
    Train's 60 s). Ray Train V2 reads it only from the environment, which fit() copies from this
    process to its controller (`get_env_vars_to_propagate`): set for the fit, restored after. The
    calling process is a trial's own, running one fit at a time."""
    if seconds is None:
        yield
        return
    old = os.environ.get(START_TIMEOUT_ENV)
    os.environ[START_TIMEOUT_ENV] = f"{seconds:g}"
    try:
        yield
    finally:
        if old is None:
            del os.environ[START_TIMEOUT_ENV]
        else:
            os.environ[START_TIMEOUT_ENV] = old
