"""The SFT loop, 2 gloo workers, the tiny model. On local Ray: ZeRO-2 and ZeRO-3 train and export a
reloadable HF student; a worker killed mid-run resumes from the last checkpoint and continues
exactly as the uninterrupted run (same steps, same data order, same losses). Under torchrun (no
Ray): the same loop gives the same per-step losses, also across a killed rank and torchrun's
restart; with LoRA only the adapters train and the student is exported with them merged, and val_loss on
held-out rows comes every eval_every steps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mixray.models import resolve
from mixray.train import faults
from mixray.train.config import TrainConfig
from mixray.train.launch import train_from_config

pytestmark = pytest.mark.integration

STEPS = 4  # crash before step 3 (0-based 2), after the step-2 checkpoint
TRAIN = {"max_steps": STEPS, "micro_batch_size": 2, "lr": 1e-3, "max_length": 128,
         "checkpoint_every": 2}
TORCHRUN_TIMEOUT_S = 300  # about 45 s on 2 idle cores with a crash and a restart, 22 s without


def _manifest(path: Path) -> str:
    rows = [{"pool": "long" if i % 4 == 0 else "short", "prompt": f"What is {i} + {i}?",
             "completion": f"{i} + {i} = {2 * i}. " * (6 if i % 4 == 0 else 2) + f"\\boxed{{{2 * i}}}",
             "phase": 0} for i in range(24)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _fit(tmp: Path, storage: Path, wrap_reporter=None, **overrides):
    t = TrainConfig(**(TRAIN | overrides))
    return train_from_config(
        t, model_path=str(resolve("tiny-random")), manifest_path=_manifest(tmp / "manifest.parquet"),
        torch_threads=1, cpus_per_worker=0.49, storage=storage,
        name=f"train-{uuid.uuid4().hex[:8]}",  # unique: a reused name silently resumes
        wrap_reporter=wrap_reporter)


def _torchrun(tmp: Path, train: dict, *, restarts: int = 0, crash: str | None = None,
              validation: Path | None = None) -> Path:
    """`torchrun --standalone --nproc-per-node 2 -m mixray.train`; returns its --out folder."""
    (tmp / "train.yaml").write_text(yaml.safe_dump(train))
    out = tmp / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(restarts), "-m", "mixray.train", "--model", "tiny-random",
           "--manifest", _manifest(tmp / "manifest.parquet"), "--config", str(tmp / "train.yaml"),
           "--out", str(out)]
    if validation is not None:
        cmd += ["--validation", str(validation)]
    # a restart needs a rendezvous store of its own (mixray.train.__main__.check_restartable)
    env = os.environ | {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    if crash is not None:  # "<step>:<marker>": faults.CrashOnce, wrapped by __main__
        env |= {faults.CRASH_ENV: crash}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out


def _reloads_with_finite_loss(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("1 + 1 = 2", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert math.isfinite(float(model(input_ids=ids, labels=ids).loss))
    return model


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
                      wrap_reporter=partial(faults.CrashOnce, after_step=2, marker=str(marker)))
    assert marker.exists(), "the test hook did not fire"
    _, reference = zero2
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    # steps 1-2 ran in the first attempt; 3-4 after resuming from the step-2 checkpoint
    assert [h["resumed_at"] for h in history] == [0, 0, 2, 2]
    # the same data order and optimizer state: per-step losses match the uninterrupted run
    for got, want in zip(history, reference):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["train_loss/long"] == pytest.approx(want["train_loss/long"], rel=1e-5)


def test_torchrun_runs_the_same_loop_and_resumes_after_a_crash(zero2, tmp_path) -> None:
    marker = tmp_path / "crashed"
    out = _torchrun(tmp_path, TRAIN | {"zero_stage": 2, "keep_checkpoints": "all"}, restarts=1,
                    crash=f"2:{marker}")
    assert marker.exists(), "the test hook did not fire"
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    # steps 1-2 ran in the first attempt; torchrun restarted both ranks, which resumed at step 2
    assert [h["resumed_at"] for h in history] == [0, 0, 2, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step2", "step4"]
    _reloads_with_finite_loss(out / "model")
    # the same loop as under Ray Train: the same losses, step by step, as the Ray ZeRO-2 run
    _, reference = zero2
    for got, want in zip(history, reference, strict=True):
        for key in ("train_loss", "train_loss/long", "train_loss/short", "lr"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), (got["step"], key)


def test_lora_trains_only_adapters_and_exports_them_merged(tmp_path) -> None:
    rank, targets = 4, ["q_proj", "v_proj"]
    lora = {"rank": rank, "alpha": 8, "dropout": 0.0, "target_modules": targets}
    validation = tmp_path / "validation.parquet"  # held-out rows, as a trial writes them
    pq.write_table(pa.Table.from_pylist(
        [{"pool": pool, "problem_id": f"v{i}", "prompt": f"What is {i} + 1?",
          "completion": f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}", "n_tokens": 9}
         for i in range(3) for pool in ("long", "short")]), validation)
    out = _torchrun(tmp_path, TRAIN | {"zero_stage": 2, "max_steps": 3, "checkpoint_every": None,
                                       "lora": lora, "eval_every": 2}, validation=validation)
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(math.isfinite(h["train_loss"]) for h in history)
    # val_loss every 2 steps and at the end, per pool and their mean
    assert ["val_loss" in h for h in history] == [False, True, True]
    for h in history[1:]:
        assert h["val_loss"] == pytest.approx((h["val_loss/long"] + h["val_loss/short"]) / 2)

    base = load_file(resolve("tiny-random") / "model.safetensors")
    targeted = {k for k in base if k.split(".")[-2] in targets}
    assert len(targeted) == 2 * len(targets)  # 2 layers
    # an adapter on W [out, in] is A [rank, in] and B [out, rank]; nothing else trains
    params = json.loads((out / "params.json").read_text())
    assert params["trainable"] == sum(rank * sum(base[k].shape) for k in targeted)
    assert params["total"] == sum(v.numel() for v in base.values()) + params["trainable"]

    model = _reloads_with_finite_loss(out / "model")  # transformers alone, no peft
    assert not any("lora" in name for name, _ in model.named_parameters())
    merged = load_file(out / "model" / "model.safetensors")
    assert set(merged) == set(base)
    # the merge changed exactly the targeted weights (B starts at 0: they moved by training)
    for key, weight in base.items():
        assert (not torch.equal(merged[key], weight)) == (key in targeted), key

    # train.keep_checkpoints defaults to resume: the finished run dropped its DeepSpeed state,
    # and run again it sees it is finished (the student is not retrained nor rewritten)
    assert sorted(p.name for p in out.iterdir()) == [
        "data_stats.json", "history.json", "model", "params.json"]
    written = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert _torchrun(tmp_path, TRAIN | {"max_steps": 3, "lora": lora}) == out
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == written
