"""The seam between the loop and whatever launched it: where metrics and checkpoints go, and
where a restarted run finds the checkpoint to resume from.

`Reporter` is all the loop knows. Ray Train's implementation is `launch.RayReporter`
(`ray.train.report` / `get_checkpoint`); under torchrun it is `FolderReporter`, which keeps
checkpoints in a folder every rank can write (one node, or a shared filesystem).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import torch.distributed as dist

log = logging.getLogger(__name__)

# Checkpoints a FolderReporter keeps: the latest to resume from, and one before it in case the
# latest was cut short (the same policy as Ray's CheckpointConfig(num_to_keep=2) in launch.py).
KEEP_CHECKPOINTS = 2


class Reporter(Protocol):
    def latest_checkpoint(self) -> AbstractContextManager[Path | None]:
        """The folder of the latest complete checkpoint (None: a fresh run), while in the block."""
        ...

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        """One step's metrics; with `checkpoint`, this rank's part of a checkpoint (every rank
        calls it, each with its own folder, whose files together make the checkpoint). Every rank
        calls it every step; a reporter may skip metrics-only reports (the checkpoint's history
        holds every step) but never a checkpoint, and must skip on all ranks alike."""
        ...


class FolderReporter:
    """Checkpoints under `root/checkpoints/step<N>`, metrics to the log (rank 0).

    Each rank copies its files into a partial folder; once all have, rank 0 renames it, so a
    folder named step<N> is always complete, and drops all but the newest KEEP_CHECKPOINTS.
    """

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "checkpoints"
        if dist.get_rank() == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".partial-*"):  # a copy cut short by a crash
                shutil.rmtree(stale)
        dist.barrier()

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return sorted(self.dir.glob("step*"), key=lambda p: int(p.name.removeprefix("step")))

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        if dist.get_rank() == 0:
            log.info("step %d: %s", metrics["step"], json.dumps(metrics))
        if checkpoint is None:
            return
        partial = self.dir / f".partial-step{metrics['step']}"
        shutil.copytree(checkpoint, partial, dirs_exist_ok=True)
        dist.barrier()
        if dist.get_rank() == 0:
            final = self.dir / f"step{metrics['step']}"
            if final.exists():  # the same step saved again after a restart
                shutil.rmtree(final)
            partial.rename(final)
            for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old)
        dist.barrier()
