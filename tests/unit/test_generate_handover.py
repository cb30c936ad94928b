"""GPU hand-over between engines: an engine is closed as soon as its generation's actor pool is
shut down, and a vLLM engine waits (bounded) for the GPU memory it will claim. No GPU here: the
memory reader is a fake (FakeGPU), the only seam a CPU machine cannot reach; the engine closed
is a real HF engine."""

from __future__ import annotations

import pytest

from mixray.generate.hf import HFEngine
from mixray.generate.stage import _EngineActor
from mixray.generate.vllm import wait_for_gpu_memory
from mixray.models import resolve

GIB = 2**30


class FakeGPU:
    """mem_get_info of an 80-GiB GPU whose previous holder frees its 60 GiB after `frees_at`
    reads (never when None)."""

    def __init__(self, frees_at: int | None) -> None:
        self.reads, self.frees_at = 0, frees_at

    def __call__(self) -> tuple[int, int]:
        self.reads += 1
        held = 0 if self.frees_at is not None and self.reads > self.frees_at else 60 * GIB
        return 80 * GIB - held, 80 * GIB


def test_an_engine_waits_until_the_last_holder_has_freed_the_gpu() -> None:
    gpu = FakeGPU(frees_at=3)
    wait_for_gpu_memory(0.9, read=gpu, poll_s=0.0, timeout_s=10)
    assert gpu.reads == 4  # three reads while held, the fourth finds it free


def test_a_gpu_that_stays_held_fails_with_the_numbers_and_its_holders() -> None:
    with pytest.raises(RuntimeError, match=r"20\.0 of 80\.0 GiB free, the engine needs 90%") as e:
        wait_for_gpu_memory(0.9, read=FakeGPU(frees_at=None), poll_s=0.0, timeout_s=0.0)
    assert "held by:" in str(e.value)


def test_the_pools_engine_is_closed_when_ray_data_deletes_its_actor() -> None:
    actor = object.__new__(_EngineActor)  # as loaded by __init__, without a job to build from
    actor.engine = engine = HFEngine.load(resolve("tiny-random"))
    assert engine.model is not None
    del actor   # what Ray Data's graceful shutdown does (`__ray_shutdown__`)
    assert engine.model is None
