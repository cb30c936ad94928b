"""The SFT loop on GPUs (skipped without CUDA): one Ray Train worker holding one GPU, bf16 and
ZeRO-2, trains the tiny model on the device and exports a student that reloads; under torchrun the
same loop takes the GPU at its LOCAL_RANK. CI has no GPU: this runs where one is lent."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mixray.models import resolve
from mixray.train.config import TrainConfig

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _manifest(path: Path) -> str:
    rows = [{"pool": "long" if i % 2 else "short", "prompt": f"What is {i} + {i}?",
             "completion": f"{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}"} for i in range(16)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_a_gpu_worker_trains_in_bf16_and_exports(ray_cluster, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from mixray.train.launch import train_from_config

    t = TrainConfig(num_workers=1, micro_batch_size=2, max_steps=4, lr=1e-3, max_length=128,
                    dtype="bf16", zero_stage=2)
    model_dir, history = train_from_config(
        t, model_path=str(resolve("tiny-random")), manifest_path=_manifest(tmp_path / "m.parquet"),
        torch_threads=1, cpus_per_worker=1.0, gpus_per_worker=1.0, storage=tmp_path / "train",
        name=f"gpu-{uuid.uuid4().hex[:8]}")
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(math.isfinite(h["train_loss"]) and h["tokens_per_s"] > 0 for h in history)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert math.isfinite(float(model(input_ids=ids, labels=ids).loss))
