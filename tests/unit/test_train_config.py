"""TrainConfig: global batch = micro x workers x accumulation, epochs or max_steps, the paper's
recipe is expressible; the loop's learning-rate schedule; no DeepSpeed op build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from mixray.train.config import TrainConfig


def test_global_batch_derives_accumulation() -> None:
    t = TrainConfig(micro_batch_size=2, num_workers=4, global_batch_size=80)
    assert t.accumulation == 10 and t.global_batch == 80
    assert TrainConfig(gradient_accumulation_steps=3).global_batch == 2 * 2 * 3


@pytest.mark.parametrize("kw, words", [
    ({"global_batch_size": 6}, "not a multiple of micro_batch_size 2 x num_workers 2 = 4"),
    ({"global_batch_size": 8, "gradient_accumulation_steps": 3}, "= 12"),
    ({"epochs": 2, "max_steps": 5}, "not both"),
    ({"max_steps": None}, "give train.epochs or train.max_steps"),
])
def test_inconsistent_settings_are_named(kw, words) -> None:
    with pytest.raises(ValidationError, match=words):
        TrainConfig(**kw)


def test_the_papers_recipe_is_expressible() -> None:
    t = TrainConfig(lr=1e-5, lr_schedule="cosine", warmup_ratio=0.0, epochs=2, dtype="bf16",
                    zero_stage=3, num_workers=4, micro_batch_size=4, global_batch_size=16,
                    packing="greedy", max_length=4096)
    assert t.max_steps is None and t.epochs == 2 and t.accumulation == 1


def test_lr_schedule_cosine_with_and_without_warmup() -> None:
    from mixray.train.engine import lr_factor

    assert [round(lr_factor(s, 5, 0.0, "cosine"), 3) for s in range(5)] == \
        [1.0, 0.905, 0.655, 0.345, 0.095]
    warm = [lr_factor(s, 10, 0.2, "cosine") for s in range(10)]
    assert warm[0] < warm[1] < warm[2] == 1.0 and warm[-1] < 0.05
    assert lr_factor(7, 10, 0.0, "constant") == 1.0


def test_lora_section_is_typed_and_reaches_the_loop() -> None:
    from mixray.train.args import LoopArgs
    from mixray.train.config import LoraConfig

    assert TrainConfig().lora is None  # full fine-tuning unless asked
    t = TrainConfig(lora={"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]})
    assert t.lora == LoraConfig(rank=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])
    assert TrainConfig(lora={}).lora.target_modules == "all-linear"
    a = LoopArgs(train=t, model_path="m", manifest_path="x.parquet", torch_threads=1)
    assert a.train.lora == t.lora and a.train.accumulation == t.accumulation \
        and a.train.zero_stage == 2


@pytest.mark.parametrize("lora, words", [
    ({"rank": 0}, "greater than or equal to 1"),
    ({"dropout": 1.0}, "less than 1"),
    ({"target_modules": []}, "at least one module name"),
    ({"target_modules": "q_proj"}, "all-linear"),  # one name is still a list
    ({"r": 8}, "Extra inputs are not permitted"),
])
def test_lora_mistakes_are_named(lora, words) -> None:
    with pytest.raises(ValidationError, match=words):
        TrainConfig(lora=lora)


def test_torchrun_config_takes_the_world_size(tmp_path) -> None:
    from mixray.train.__main__ import read_train_config

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: x\ntrain: {max_steps: 3, micro_batch_size: 1, global_batch_size: 8}\n")
    t = read_train_config(sweep, world=4)  # a whole sweep file: its train section
    assert (t.num_workers, t.accumulation, t.max_steps) == (4, 2, 3)
    bare = tmp_path / "train.json"
    bare.write_text('{"num_workers": 2, "lora": {"rank": 4}}')
    assert read_train_config(bare, world=2).lora.rank == 4
    with pytest.raises(ValueError, match="num_workers is 2 but torchrun started 3"):
        read_train_config(bare, world=3)
    bare.write_text('{"zero_stage": 4}')
    with pytest.raises(ValueError, match="zero_stage"):
        read_train_config(bare, world=2)


def test_torchrun_restarts_need_their_own_store() -> None:
    from mixray.train.__main__ import check_restartable

    shared = {"TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_USE_AGENT_STORE": "True"}
    with pytest.raises(ValueError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        check_restartable(shared)
    check_restartable(shared | {"TORCHELASTIC_USE_AGENT_STORE": "False"})  # the variable set
    check_restartable(shared | {"TORCHELASTIC_MAX_RESTARTS": "0"})  # no restart, no problem


def test_deepspeed_builds_no_shared_memory_op() -> None:
    """The engine keeps DeepSpeed from compiling its CPU shm op (minutes, and a lock a killed
    build leaves behind): the comm backend then finds no op to build."""
    from deepspeed.comm.torch import build_shm_op

    from mixray.train.engine import skip_shm_comm_op

    skip_shm_comm_op()
    assert build_shm_op() is None


def test_keep_checkpoints_defaults_to_bounded_disk_and_is_checked() -> None:
    assert TrainConfig().keep_checkpoints == "resume"
    assert TrainConfig(keep_checkpoints="all").keep_checkpoints == "all"
    with pytest.raises(ValidationError, match="keep_checkpoints"):
        TrainConfig(keep_checkpoints="none")
    assert "disk" in TrainConfig.model_fields["keep_checkpoints"].description


def test_keep_checkpoints_changes_no_key_and_is_not_searchable() -> None:
    from mixray.config import load_sweep
    from mixray.search import SearchConfig

    sweep = Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml"
    bounded, everything = (load_sweep(sweep, [f"train.keep_checkpoints={keep}"])
                           for keep in ("resume", "all"))
    assert bounded.resume_key() == everything.resume_key()
    assert bounded.trials() == everything.trials()  # trial names, and so their Train runs
    assert bounded.resume_key() != load_sweep(sweep, ["train.lr=0.5"]).resume_key()
    with pytest.raises(ValidationError, match="keep_checkpoints"):
        SearchConfig(space={"train.keep_checkpoints": {"grid": ["resume", "all"]}})


def test_trials_wait_for_booting_nodes_as_long_as_resources_say(monkeypatch) -> None:
    """resources.node_start_timeout_s reaches the controller of a trial's TorchTrainer, which
    Ray Train V2 only configures from the environment fit() copies to it (issue 26): inside the
    fit the variable is set to the sweep's value and handed on; after it, the process is as it
    was. It is placement, never part of a key."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from mixray.config import load_sweep
    from mixray.train.launch import START_TIMEOUT_ENV, worker_group_start_timeout

    sweep = Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml"
    cfg = load_sweep(sweep)
    assert cfg.resources.node_start_timeout_s == 900
    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    with worker_group_start_timeout(cfg.resources.node_start_timeout_s):
        assert get_env_vars_to_propagate()[START_TIMEOUT_ENV] == "900"
    assert START_TIMEOUT_ENV not in os.environ
    monkeypatch.setenv(START_TIMEOUT_ENV, "30")
    with worker_group_start_timeout(120.0):
        assert get_env_vars_to_propagate()[START_TIMEOUT_ENV] == "120"
    assert os.environ[START_TIMEOUT_ENV] == "30"
    slow = load_sweep(sweep, ["resources.node_start_timeout_s=60"])
    assert slow.resume_key() == cfg.resume_key()
