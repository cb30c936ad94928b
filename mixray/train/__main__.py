"""The SFT loop under torchrun, without Ray: the same `loop.train` the sweep's TorchTrainer runs.

    torchrun --standalone --nproc-per-node 2 -m mixray.train --model tiny-random \\
        --manifest runs/trials/.../manifest.parquet --config train.yaml --out runs/torchrun/x

--config is a YAML or JSON file with the sweep file's `train:` keys (TrainConfig), or a whole
sweep file, whose `train:` section is taken. num_workers is the torchrun world size (giving
another value is an error). On a machine with GPUs each rank takes the one at its LOCAL_RANK
(NCCL for the model, gloo for the loop's CPU tensors); otherwise all is gloo on CPU. Written under
--out: checkpoints/step<N>/ (DeepSpeed, the latest two), and at the end model/ (the student as a
plain HF folder, LoRA merged), history.json, params.json, data_stats.json; then checkpoints/ is
deleted, unless train.keep_checkpoints is all. Run again with the same --out, or let torchrun
restart it (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --max-restarts N; see
check_restartable), to resume from the latest checkpoint; a finished run, run again, says so and
exits (with keep_checkpoints: all it resumes from its last checkpoint, e.g. to train longer).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from mixray import disk, logs, models
from mixray.train.config import TrainConfig

log = logging.getLogger("mixray.train")


def read_train_config(path: Path, world: int) -> TrainConfig:
    """The train section in `path`, its num_workers set to (or checked against) the world size."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of train keys, got {type(raw).__name__}")
    section = raw.get("train", {}) if isinstance(raw.get("train"), dict) else raw
    if section.get("num_workers", world) != world:
        raise ValueError(f"{path}: num_workers is {section['num_workers']} but torchrun started "
                         f"{world} processes; leave num_workers out or make them agree")
    try:
        return TrainConfig.model_validate(section | {"num_workers": world})
    except ValidationError as e:
        raise ValueError(f"{path}: {e}") from None


def check_restartable(env: Mapping[str, str]) -> None:
    """torchrun --max-restarts > 0 needs a rendezvous store of its own per attempt.

    By default the workers share torchrun's rendezvous TCPStore, whose keys outlive a restart:
    measured here (torch 2.13), the restarted ranks read the dead ranks' gloo addresses and
    DeepSpeed's first new_group fails with "Connection refused" (pytorch#135712). With the c10d
    rendezvous and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 each attempt gets a fresh store and the
    restart resumes from the last checkpoint (torchrun's static rendezvous always shares it).
    """
    if int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and \
            env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise ValueError("torchrun --max-restarts shares its rendezvous store with the workers, "
                         "so a restart cannot rebuild the process groups; use the c10d "
                         "rendezvous (--standalone or --rdzv-backend c10d) and run it as "
                         "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun ...")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchrun ... -m mixray.train",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model spec (mixray/models.py) or folder")
    parser.add_argument("--manifest", required=True, type=Path, help="a mix manifest (Parquet)")
    parser.add_argument("--config", required=True, type=Path, help="train keys (YAML/JSON)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoints and the student")
    parser.add_argument("--validation", type=Path, help="held-out rows (a trial's "
                        "validation.parquet): val_loss every eval_every steps and at the end")
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads per rank")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure()
    world = int(os.environ.get("WORLD_SIZE", "0"))
    if not world:
        raise SystemExit("run this under torchrun: torchrun --nproc-per-node N -m mixray.train ...")
    try:
        t = read_train_config(args.config, world)
        check_restartable(os.environ)
        if t.eval_every is not None and args.validation is None:
            raise ValueError("train.eval_every is set, but there is no --validation file")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if finished(args.out):
        if int(os.environ.get("RANK", "0")) == 0:
            log.info("%s holds a finished run (student at %s): nothing to do; use another --out "
                     "to train again", args.out, args.out / "model")
        return

    import torch
    import torch.distributed as dist

    from mixray.train import faults
    from mixray.train.args import LoopArgs
    from mixray.train.loop import train
    from mixray.train.reporting import FolderReporter

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    try:
        loop_args = LoopArgs(
            train=t, model_path=str(models.resolve(args.model)), manifest_path=str(args.manifest),
            torch_threads=args.torch_threads,
            validation_path=None if args.validation is None else str(args.validation))
        reporter = FolderReporter(args.out)
        train(loop_args, faults.from_env(reporter))  # as it is, unless a test asks for a crash
        if dist.get_rank() == 0:
            _publish(reporter.checkpoints()[-1], args.out)
            if t.keep_checkpoints == "resume":
                _drop_checkpoints(reporter.dir)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def finished(out: Path) -> bool:
    """Whether `out` holds a run that finished with its checkpoints deleted (the default): its
    student and records are published and there is nothing to resume from."""
    return ((out / "model").is_dir() and (out / "history.json").exists()
            and not (out / "checkpoints").exists())


def _drop_checkpoints(folder: Path) -> None:
    """Delete a finished run's checkpoints. Renamed first (atomic), so that a delete cut short
    leaves a trash folder, never a half-deleted checkpoint a rerun would try to resume from."""
    trash = folder.with_name(f".{folder.name}-deleted")
    disk.remove(trash)  # left by an earlier delete cut short, if any
    folder.rename(trash)
    log.info("freed %s of checkpoints (train.keep_checkpoints: resume)",
             disk.human_size(disk.remove(trash)))


def _publish(final: Path, out: Path) -> None:
    """Move the final checkpoint's student to out/model and copy its records next to it."""
    if (final / "model").exists():
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        (final / "model").rename(out / "model")
    else:  # a rerun of a finished run: nothing trained, the student was published before
        assert (out / "model").exists(), f"{final} holds no model and {out}/model is missing"
    for name in ("history.json", "params.json", "data_stats.json"):
        shutil.copy(final / name, out / name)
    log.info("student at %s (%s)", out / "model", final.name)


if __name__ == "__main__":
    main()
