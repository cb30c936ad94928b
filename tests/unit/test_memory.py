"""The memory preview (issue 27): model shapes and parameters as the real models count them,
model states as DeepSpeed's own estimators give them, activations as torch's saved-tensor hooks
count them on a real forward pass (CPU, bf16), and plans that cannot fit their GPUs refused by
--dry-run with the keys and numbers that make them fit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mixray import cluster
from mixray.config import load_sweep
from mixray.cost.memory import activations, model_states
from mixray.cost.shape import from_config, model_shape
from mixray.sweep.__main__ import main

REPO = Path(__file__).resolve().parents[2]
PAPER_MIX = str(REPO / "sweeps" / "paper-mix.yaml")
AWS = str(REPO / "clusters" / "aws.yaml")


def small(kind: str):
    """A small real model of each layout the shapes cover, in bf16 with SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    if kind == "qwen2":   # q, k, v biases; tied embeddings, as the 0.5B-3B
        config = Qwen2Config(**common, tie_word_embeddings=True)
        return config, Qwen2ForCausalLM(config).to(torch.bfloat16)
    config = LlamaConfig(**common, tie_word_embeddings=False)  # an untied head, as Llama-3.1-8B
    return config, LlamaForCausalLM(config).to(torch.bfloat16)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_a_shape_counts_the_parameters_the_model_has(kind: str) -> None:
    config, model = small(kind)
    shape = from_config(config.to_dict(), "test")
    assert shape.params == sum(p.numel() for p in model.parameters())


def test_published_shapes_give_the_published_sizes() -> None:
    """Qwen2.5-3B is 3.09B parameters and Llama-3.1-8B 8.03B (their model cards)."""
    assert model_shape("Qwen/Qwen2.5-3B-Instruct").params == pytest.approx(3.09e9, rel=0.005)
    assert model_shape("meta-llama/Llama-3.1-8B-Instruct").params == pytest.approx(8.03e9,
                                                                                   rel=0.005)
    guessed = model_shape("someone/Unknown-13B-Chat")
    assert guessed.params == pytest.approx(13e9, rel=0.05) and "size in its name" in guessed.source
    with pytest.raises(ValueError, match="no size in its name"):
        model_shape("someone/mystery-model")


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_activations_are_what_a_real_forward_pass_keeps_for_backward(kind: str) -> None:
    """Every tensor autograd saves in a bf16 forward of 512 tokens, counted once per storage
    (weights excluded), against the preview's arithmetic: within 5%."""
    config, model = small(kind)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if (ptr := t.untyped_storage().data_ptr()) not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    tokens = 512
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=torch.randint(0, 512, (1, tokens)), use_cache=False, logits_to_keep=1)
    predicted = activations(from_config(config.to_dict(), "test"), tokens, 2, False)
    assert sum(saved.values()) == pytest.approx(predicted, rel=0.05)


@pytest.mark.parametrize("stage", [2, 3])
def test_model_states_are_deepspeeds_own_estimate(stage: int) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    cfg = load_sweep(PAPER_MIX, [f"train.zero_stage={stage}"])
    shape = model_shape("Qwen/Qwen2.5-3B-Instruct")
    if stage == 2:
        _, gpu = estimate_zero2_model_states_mem_needs(shape.params, num_gpus_per_node=4,
                                                       cpu_offload=False)
    else:
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.params, shape.largest_layer_params, num_gpus_per_node=4, cpu_offload=False)
    assert model_states(shape, cfg.train) == pytest.approx(gpu, rel=1e-6)


def test_a_plan_that_cannot_fit_is_refused_with_the_keys_that_make_it_fit(
        tmp_path: Path, capsys) -> None:
    """The 3B paper students without gradient checkpointing on aws.yaml's 44-GiB L40S: exit 2
    before any work, naming the student, the keys, both numbers and the remedy."""
    code = main([PAPER_MIX, f"--set=run_root={tmp_path}", "--set=train.gradient_checkpointing="
                 "false", "--dry-run", f"--cluster={AWS}"])
    err = capsys.readouterr().err
    assert code == 2
    found = re.search(r"student 'Qwen/Qwen2\.5-3B-Instruct': one training rank needs "
                      r"([\d.]+) GiB \(train\.max_length 8192.*has ([\d.]+) GiB", err)
    l40s = cluster.gpu_memory(cluster.file_groups(Path(AWS)))["trainer_node"]
    assert found and float(found[1]) > float(found[2]) == l40s, err
    assert "train.gradient_checkpointing: true" in err


def test_a_plan_within_ten_percent_is_warned_and_a_vllm_rank_too_big_refused(
        tmp_path: Path, capsys, caplog) -> None:
    assert main([str(REPO / "sweeps" / "paper-7b-8b.yaml"), f"--set=run_root={tmp_path}",
                 "--dry-run", f"--cluster={AWS}"]) == 0   # Llama-3.1-8B: 42 of 44 GiB
    assert "meta-llama/Llama-3.1-8B-Instruct" in caplog.text and "within 10%" in caplog.text
    code = main([PAPER_MIX, f"--set=run_root={tmp_path}", "--dry-run", f"--cluster={AWS}",
                 "--set=evaluate.judge.engine.tensor_parallel_size=1"])   # a 32B judge on 1 GPU
    assert code == 2
    assert re.search(r"judge \(Qwen/Qwen2\.5-32B-Instruct\): one vLLM rank needs [\d.]+ GiB",
                     capsys.readouterr().err)


def test_without_a_cluster_file_the_needs_are_printed_without_a_verdict(
        tmp_path: Path, capsys) -> None:
    assert main([PAPER_MIX, f"--set=run_root={tmp_path}", "--dry-run",
                 "--set=train.gradient_checkpointing=false"]) == 0
    out = capsys.readouterr().out
    assert "memory   : one training rank" in out and "no GPU memory known" in out
    assert re.search(r"Qwen/Qwen2\.5-3B-Instruct: weights\+gradients\+optimizer [\d.]+ \+ "
                     r"activations [\d.]+", out)


def test_a_model_of_an_unknown_layout_is_not_sized_and_not_refused(tmp_path: Path,
                                                                    capsys) -> None:
    folder = tmp_path / "odd-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "mystery", "d_model": 64}')
    assert main([PAPER_MIX, f"--set=run_root={tmp_path}", f"--set=students=[{folder}]",
                 "--dry-run", f"--cluster={AWS}"]) == 0
    assert re.search(r"odd-model: not sized \(.*a layout this preview does not know",
                     capsys.readouterr().out)
