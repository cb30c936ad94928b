"""Test-only fault injection: a worker that dies once mid-run, to exercise resumption.

It goes through the loop's `Reporter` seam, so the loop and its arguments know nothing of it:
`CrashOnce` wraps the launcher's reporter and, once the report of a given step has gone through,
makes the last rank exit. Under Ray Train a test passes it to `launch.train_from_config`
(`wrap_reporter`); a torchrun subprocess cannot be handed an object, so there `__main__` wraps its
reporter from the environment (`from_env`, variable CRASH_ENV).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import torch.distributed as dist

from mixray.train.reporting import Reporter

log = logging.getLogger(__name__)

# "<step>:<marker file>": the torchrun form of CrashOnce(after_step=<step>, marker=<marker file>)
CRASH_ENV = "MIXRAY_TEST_CRASH"

# Ray Train V2 collects reports by polling the workers every 2 s
# (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S): a worker that dies sooner after reporting loses that report,
# so the crash waits 3 polls.
CRASH_DELAY_S = 6.0


class CrashOnce:
    """A Reporter that passes everything to `inner`; after the report of step `after_step` (the
    1-based count of steps done), the last rank, on the attempt that finds no `marker` file,
    creates it and dies with os._exit(1). A restarted attempt finds the marker and trains on."""

    def __init__(self, inner: Reporter, *, after_step: int, marker: str | Path) -> None:
        self.inner = inner
        self.after_step = after_step
        self.marker = Path(marker)

    def latest_checkpoint(self) -> AbstractContextManager[Path | None]:
        return self.inner.latest_checkpoint()

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        self.inner.report(metrics, checkpoint)
        if metrics["step"] == self.after_step:
            self._crash_once()

    def _crash_once(self) -> None:
        rank = dist.get_rank()
        if rank != dist.get_world_size() - 1 or self.marker.exists():
            return
        self.marker.write_text(f"crashed after step {self.after_step}\n")
        time.sleep(CRASH_DELAY_S)
        log.warning("test hook: rank %d exits after step %d", rank, self.after_step)
        os._exit(1)


def from_env(reporter: Reporter, env: Mapping[str, str] = os.environ) -> Reporter:
    """`reporter`, wrapped in CrashOnce when CRASH_ENV is set (tests only), else as it is."""
    value = env.get(CRASH_ENV)
    if not value:
        return reporter
    step, _, marker = value.partition(":")
    return CrashOnce(reporter, after_step=int(step), marker=marker)
