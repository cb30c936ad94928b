"""The training benchmark's CPU attribution: which process used how much of the machine while the
workers trained (benchmarks/training.py, the 'cpu_cores_while_training' of each run)."""

from __future__ import annotations

import pytest

from benchmarks.training import CpuSampler, _process_name


@pytest.mark.parametrize("cmd, comm, name", [
    (["ray::RayTrainWorker   "], "ray::RayTrainWor", "ray::RayTrainWorker"),
    (["/v/bin/python", "-u", "-m", "mixray.train", "--model", "x"], "python", "mixray.train"),
    (["/v/bin/python", "-u", "/v/ray/_private/log_monitor.py", "--x"], "python", "log_monitor.py"),
    (["/v/ray/core/src/ray/gcs/gcs_server", "--log_dir=/t"], "gcs_server", "gcs_server"),
    ([""], "kdamond.0", "kdamond.0"),
])
def test_processes_are_named_by_actor_module_or_executable(cmd, comm, name) -> None:
    assert _process_name(cmd, comm) == name


def _sampler(per_second: list[dict[int, tuple[str, float]]]) -> CpuSampler:
    """Samples one second apart; each entry: pid -> (name, cores used over the second before)."""
    sampler, totals = CpuSampler(), {}
    for t, used in enumerate(per_second):
        for pid, (name, cores) in used.items():
            totals[pid] = (name, totals.get(pid, (name, 0.0))[1] + cores)
        sampler.samples.append((float(t), {pid: totals[pid] for pid in used}))
    return sampler


def test_shares_come_from_the_last_seconds_both_workers_were_busy() -> None:
    w = "ray::RayTrainWorker"
    start_up = [{1: (w, 0.2), 2: (w, 0.3), 3: ("gcs_server", 0.9)}] * 4  # others busy, not counted
    training = [{1: (w, 0.9), 2: (w, 0.8), 3: ("gcs_server", 0.1), 4: ("raylet", 0.05)}] * 6
    idle = [{1: (w, 0.01), 2: (w, 0.0), 3: ("gcs_server", 0.5), 4: ("raylet", 0.0)}] * 3
    share = _sampler(start_up + training + idle).training_share(w, workers=2, seconds=4.0)
    assert share["window_s"] == 4.0
    assert share["workers"] == pytest.approx(1.7)
    assert share["others"] == pytest.approx(0.15)
    assert share["others_by_process"] == {"gcs_server": 0.1, "raylet": 0.05}


def test_no_share_unless_every_worker_was_busy() -> None:
    w = "mixray.train"
    one_of_two = [{1: (w, 0.95), 2: (w, 0.1)}] * 8
    assert _sampler(one_of_two).training_share(w, workers=2, seconds=5.0) == {}
    alone = [{1: (w, 0.95), 3: ("torch.distributed.run", 0.02)}] * 8
    share = _sampler(alone).training_share(w, workers=1, seconds=5.0)
    assert (share["window_s"], share["workers"], share["others"]) == (5.0, 0.95, 0.02)
