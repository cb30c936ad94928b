"""The SFT loop on local Ray, 2 gloo workers, the tiny model: ZeRO-2 and ZeRO-3 train and export a
reloadable HF student; a worker killed mid-run resumes from the last checkpoint and continues
exactly as the uninterrupted run (same steps, same data order, same losses)."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mixray.config import TrainConfig
from mixray.models import resolve
from mixray.train.launch import train_from_config

pytestmark = pytest.mark.integration

STEPS = 4  # crash before step 3 (0-based 2), after the step-2 checkpoint


def _manifest(path: Path) -> str:
    rows = [{"pool": "long" if i % 4 == 0 else "short", "prompt": f"What is {i} + {i}?",
             "completion": f"{i} + {i} = {2 * i}. " * (6 if i % 4 == 0 else 2) + f"\\boxed{{{2 * i}}}",
             "phase": 0} for i in range(24)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _fit(tmp: Path, storage: Path, test_hooks: dict | None = None, **overrides):
    t = TrainConfig(**({"max_steps": STEPS, "micro_batch_size": 2, "lr": 1e-3, "max_length": 128,
                        "checkpoint_every": 2} | overrides))
    return train_from_config(
        t, model_path=str(resolve("tiny-random")), manifest_path=_manifest(tmp / "manifest.parquet"),
        torch_threads=1, cpus_per_worker=0.49, storage=storage,
        name=f"train-{uuid.uuid4().hex[:8]}",  # unique: a reused name silently resumes
        **(test_hooks or {}))


def _reloads_with_finite_loss(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("1 + 1 = 2", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert math.isfinite(float(model(input_ids=ids, labels=ids).loss))


@pytest.fixture(scope="module")
def zero2(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero2")
    return _fit(tmp, tmp / "storage", zero_stage=2)


def test_zero2_trains_and_exports(zero2) -> None:
    model_dir, history = zero2
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert {"train_loss/long", "train_loss/short", "lr", "tokens_per_s"} <= set(history[0])
    assert history[0]["lr"] == pytest.approx(1e-3) and history[-1]["lr"] < history[0]["lr"]  # cosine
    _reloads_with_finite_loss(model_dir)


def test_zero3_bf16_packed_with_accumulation_trains_and_exports(ray_cluster, tmp_path) -> None:
    model_dir, history = _fit(tmp_path, tmp_path / "storage", zero_stage=3, dtype="bf16",
                              packing="greedy", micro_batch_size=1, global_batch_size=4,
                              max_steps=2, gradient_checkpointing=True)
    assert [h["step"] for h in history] == [1, 2]
    assert history[0]["real_token_share"] > 0.9
    _reloads_with_finite_loss(model_dir)
    # the export holds every weight, not rank 0's ZeRO-3 shard
    from safetensors.torch import load_file
    weights = load_file(model_dir / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape[1] == 64


def test_killed_worker_resumes_from_checkpoint(zero2, tmp_path) -> None:
    marker = tmp_path / "crashed"
    _, history = _fit(tmp_path, tmp_path / "storage", zero_stage=2, max_failures=1,
                      test_hooks={"test_crash_step": 2, "test_crash_marker": str(marker)})
    assert marker.exists(), "the test hook did not fire"
    _, reference = zero2
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    # steps 1-2 ran in the first attempt; 3-4 after resuming from the step-2 checkpoint
    assert [h["resumed_at"] for h in history] == [0, 0, 2, 2]
    # the same data order and optimizer state: per-step losses match the uninterrupted run
    for got, want in zip(history, reference):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["train_loss/long"] == pytest.approx(want["train_loss/long"], rel=1e-5)
