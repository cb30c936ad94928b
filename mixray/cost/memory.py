"""The memory preview: what one training rank and one engine replica need on a GPU, against
what the GPUs of their node type have, before any GPU is booked.

A training rank holds (bytes, N parameters, W ranks, LL the largest module ZeRO-3 gathers):
- model states under its ZeRO stage and dtype, DeepSpeed's arithmetic without offload
  (`deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`, `stage3`'s):
  in bf16 each parameter costs 2 bytes of 16-bit weight, 2 + 4 of 16- and 32-bit gradient and
  4 + 8 of fp32 master weight and Adam moments (18 besides the weight): ZeRO-0 20N, ZeRO-1
  8N + 12N/W, ZeRO-2 2N + 18N/W, ZeRO-3 4LL + 18N/W. In fp32: 16N, 8N + 8N/W, 4N + 12N/W,
  4LL + 16N/W. With LoRA the base weights are frozen (dtype bytes each, /W under ZeRO-3) and
  only the adapters carry gradients and moments (counted on every linear layer: an upper bound);
- activations of `micro_batch_size` x `max_length` tokens (`layer_activations`: what each decoder
  layer keeps for backward, SDPA attention), or with gradient checkpointing only each layer's
  input plus one layer recomputed;
- the loss's chunk: `LOSS_CHUNK` positions of fp32 logits and their gradient (`train.loss`);
- `OVERHEAD_GIB` for the CUDA context, NCCL's buffers and the allocator's slack.
An engine replica (vLLM) holds, per tensor-parallel rank, its weights and the KV cache of one
`max_model_len` sequence (the least vLLM starts with), within `gpu_memory_utilization` of the GPU.

These are arithmetic, not measurements: the GPU acceptance run (`make gpu-check`) measures a
3B-shaped model's peak against them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixray.cost.shape import Shape
from mixray.train.config import LOSS_CHUNK, TrainConfig

GIB = float(2**30)
# CUDA context (~0.5 GiB with torch 2.x), NCCL's communicator buffers and the caching allocator's
# fragmentation: an allowance, to be replaced by what the GPU acceptance run measures.
OVERHEAD_GIB = 1.5
# vLLM's activation workspace and CUDA graphs beside weights and KV cache (its profiling run).
ENGINE_OVERHEAD_GIB = 2.0
WARN_MARGIN = 0.10  # a plan within 10% of the GPU's memory is warned about


@dataclass(frozen=True)
class RankMemory:
    """One training rank's need, in GiB, part by part."""

    states: float
    activations: float  # as configured
    activations_other: float  # with gradient checkpointing switched the other way
    loss: float
    overhead: float = OVERHEAD_GIB

    @property
    def total(self) -> float:
        return self.states + self.activations + self.loss + self.overhead

    @property
    def total_other(self) -> float:
        return self.total - self.activations + self.activations_other


def model_states(shape: Shape, train: TrainConfig) -> float:
    """Bytes of weights, gradients and optimizer states on one rank (module docstring)."""
    n, w, ll, stage = shape.params, train.num_workers, shape.largest_layer_params, train.zero_stage
    weight = 2 if train.dtype == "bf16" else 4
    if train.lora is not None:
        adapters = adapter_params(shape, train.lora.rank)
        base = (4 * ll + weight * n / w) if stage == 3 else weight * n
        return base + adapters * (weight + 18 if train.dtype == "bf16" else 16)
    grad, master = (6, 12) if train.dtype == "bf16" else (4, 8)  # besides the weight
    return {0: (weight + grad + master) * n,
            1: (weight + grad) * n + master * n / w,
            2: weight * n + (grad + master) * n / w,
            3: 4 * ll + (grad + master) * n / w}[stage]


def adapter_params(shape: Shape, rank: int) -> int:
    """LoRA adapters on every linear layer of every decoder layer: rank x (in + out) each."""
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_dim, shape.intermediate
    per_layer = (h + q) * 2 + (h + kv) * 2 + (h + i) * 3
    return rank * per_layer * shape.layers


def layer_activations(shape: Shape, dtype_bytes: int) -> float:
    """Bytes one decoder layer keeps for backward per token (HF Llama / Qwen2 with SDPA, whose
    attention keeps no score matrix), as counted on CPU with torch's saved-tensor hooks
    (tests/unit/test_memory.py): each of the two RMSNorms keeps its fp32 input and two copies of
    its output in the dtype (one is the next linear layers' input); attention keeps the rotated
    q and k, v, its output and its fp32 log-sum-exp per head; the gated MLP its gate, up,
    activation and product. Qwen2.5-3B in bf16: 130 kB per token per layer."""
    a, h, i = dtype_bytes, shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_dim
    norms = 2 * (4 * h + 2 * a * h)
    attention = a * (2 * q + 2 * kv) + 4 * shape.heads
    mlp = 4 * a * i
    return norms + attention + mlp


def activations(shape: Shape, tokens: int, dtype_bytes: int, checkpointing: bool) -> float:
    """Bytes of activations for ``tokens`` tokens in one micro-batch: every layer's, or with
    gradient checkpointing each layer's input and one layer's recomputed ones; plus the final
    norm's (fp32 input, output)."""
    per_layer = layer_activations(shape, dtype_bytes)
    final_norm = 4 * shape.hidden + dtype_bytes * shape.hidden
    if checkpointing:
        kept = shape.layers * dtype_bytes * shape.hidden + per_layer
    else:
        kept = shape.layers * per_layer
    return tokens * (kept + final_norm)


def loss_chunk(shape: Shape) -> float:
    """Bytes of the loss's peak: one chunk's fp32 logits and their gradient (train.loss)."""
    return LOSS_CHUNK * shape.vocab * 4 * 2


def rank_memory(shape: Shape, train: TrainConfig) -> RankMemory:
    """One training rank of ``train`` on a model of ``shape``, in GiB."""
    tokens = train.micro_batch_size * train.max_length
    a = 2 if train.dtype == "bf16" else 4
    ckpt = train.gradient_checkpointing
    return RankMemory(states=model_states(shape, train) / GIB,
                      activations=activations(shape, tokens, a, ckpt) / GIB,
                      activations_other=activations(shape, tokens, a, not ckpt) / GIB,
                      loss=loss_chunk(shape) / GIB)


def engine_memory(shape: Shape, tensor_parallel: int, max_model_len: int,
                  dtype_bytes: int = 2) -> float:
    """GiB one vLLM tensor-parallel rank needs: its share of the weights and of one
    max_model_len sequence's KV cache (keys and values, every layer), plus its workspace."""
    weights = shape.params * dtype_bytes / tensor_parallel
    kv = 2 * shape.layers * shape.kv_dim * dtype_bytes * max_model_len / tensor_parallel
    return (weights + kv) / GIB + ENGINE_OVERHEAD_GIB
