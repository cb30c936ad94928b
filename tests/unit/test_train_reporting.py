"""The loop's reporters, on a one-process gloo group: Ray's sends metrics at most once per interval
but every checkpoint; the torchrun folder reporter keeps the newest complete checkpoints, merges
the ranks' files, resumes from the latest and ignores a copy cut short by a crash."""

from __future__ import annotations

import pytest
import torch.distributed as dist


@pytest.fixture()
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_ray_reporter_coalesces_metrics_but_never_a_checkpoint(group, tmp_path,
                                                               monkeypatch) -> None:
    import ray.train

    from mixray.train.launch import RayReporter

    sent = []
    monkeypatch.setattr(ray.train, "report",
                        lambda metrics, checkpoint=None: sent.append((metrics["step"], checkpoint)))
    reporter = RayReporter(interval_s=3600.0)
    for step in range(1, 6):
        reporter.report({"step": step}, checkpoint=tmp_path if step == 4 else None)
    assert [s for s, _ in sent] == [1, 4]  # the first, then only the checkpoint
    assert sent[1][1] is not None
    every = RayReporter(interval_s=0.0)
    for step in range(1, 4):
        every.report({"step": step})
    assert [s for s, _ in sent[2:]] == [1, 2, 3]
    rungs = RayReporter(interval_s=3600.0, always=frozenset({2, 4}))
    for step in range(1, 6):
        rungs.report({"step": step})
    assert [s for s, _ in sent[5:]] == [1, 2, 4]  # a scheduler's rungs go whatever the interval


def test_folder_reporter_keeps_complete_checkpoints(group, tmp_path) -> None:
    from mixray.train.reporting import KEEP_CHECKPOINTS, FolderReporter

    (tmp_path / "run" / "checkpoints" / ".partial-step9").mkdir(parents=True)  # a crash's leftover
    reporter = FolderReporter(tmp_path / "run")
    assert not list(reporter.dir.glob(".partial-*"))
    with reporter.latest_checkpoint() as d:
        assert d is None
    for step in (2, 4, 10):
        part = tmp_path / f"rank-files-{step}"
        (part / f"step{step}").mkdir(parents=True)
        (part / f"step{step}" / "shard.pt").write_text(str(step))
        (part / "latest").write_text(f"step{step}")
        reporter.report({"step": step}, checkpoint=part)
    reporter.report({"step": 11})  # metrics only: no checkpoint folder
    names = [p.name for p in reporter.checkpoints()]
    assert names == ["step4", "step10"][-KEEP_CHECKPOINTS:]  # numeric order, not "step10" < "step4"
    with reporter.latest_checkpoint() as d:
        assert (d / "latest").read_text() == "step10" and (d / "step10" / "shard.pt").exists()
