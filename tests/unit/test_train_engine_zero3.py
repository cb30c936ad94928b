"""What the engine builds under ZeRO-3 without starting it: DeepSpeed's buffers scaled by the
model's hidden size (ZeRO-3 only), and parameter counts and decay groups that read the whole
shape of a parameter zero.Init has partitioned. No process group, no Ray."""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from mixray.train.args import LoopArgs
from mixray.train.config import TrainConfig
from mixray.train.engine import deepspeed_config, hidden_size, model_dtype, ndim, numel


def _args(**train) -> LoopArgs:
    return LoopArgs(train=TrainConfig(**train), model_path="", manifest_path="", torch_threads=1)


def test_zero3_buffers_follow_the_hidden_size_and_only_under_zero3() -> None:
    zero = deepspeed_config(_args(zero_stage=3), world=2, hidden=576)["zero_optimization"]
    # transformers' "auto" values: hidden^2, 0.9 hidden^2, 10 hidden (not 5e8, 5e7, 1e5)
    assert zero == {"stage": 3, "reduce_bucket_size": 576 * 576,
                    "stage3_prefetch_bucket_size": int(0.9 * 576 * 576),
                    "stage3_param_persistence_threshold": 5760}
    assert deepspeed_config(_args(zero_stage=2), 2, 576)["zero_optimization"] == {"stage": 2}
    assert deepspeed_config(_args(zero_stage=3), 2, None)["zero_optimization"] == {"stage": 3}


def test_hidden_size_is_read_from_the_model_folder(tmp_path) -> None:
    LlamaConfig(hidden_size=96, num_attention_heads=4).save_pretrained(tmp_path)
    assert hidden_size(str(tmp_path)) == 96


def test_a_partitioned_parameter_counts_whole() -> None:
    """zero.Init leaves an empty placeholder and the real shape in ds_shape / ds_numel."""
    weight = torch.nn.Parameter(torch.empty(0))
    weight.ds_shape, weight.ds_numel = torch.Size([32, 16]), 512
    norm = torch.nn.Parameter(torch.empty(0))
    norm.ds_shape, norm.ds_numel = torch.Size([16]), 16
    assert (numel(weight), ndim(weight), numel(norm), ndim(norm)) == (512, 2, 16, 1)
    plain = torch.nn.Parameter(torch.zeros(3, 4))
    assert (numel(plain), ndim(plain)) == (12, 2)


def test_the_model_is_loaded_in_the_training_dtype() -> None:
    assert model_dtype(_args(dtype="bf16")) == torch.bfloat16
    assert model_dtype(_args()) == torch.float32
