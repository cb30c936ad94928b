"""Token-weighted causal-LM loss, overall and per pool (teacher label), without full logits.

Computed here rather than by the model's `labels=` path so that one forward pass gives both the
loss to optimise and the per-pool sums the loop reports (train_loss/long, train_loss/short).

`model_losses` never holds the [positions, vocab] logits of a whole micro-batch: the model returns
its final hidden states (`logits_to_keep=1`: the head runs on one position per row), and the
output head and the fp32 cross-entropy run on `LOSS_CHUNK` loss positions at a time, each chunk
recomputed in backward (activation checkpointing) rather than kept. Only positions with a loss
reach the head: prompt and padding tokens cost no head FLOPs. The head is called as a module,
never through its weight, so that under ZeRO-3 DeepSpeed's hooks gather its partitioned weight
for each call (and again for each recomputation). `token_losses` (full logits) stays as the
reference the unit tests compare against.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mixray.train.config import LOSS_CHUNK
from mixray.train.data import IGNORE


def forward_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys the model takes: labels and pool_ids stay with the loss. use_cache=False matters:
    with a KV cache, transformers 5.19 skips packed-sequence detection (masking_utils
    `_preprocess_mask_arguments`) and packed samples would attend to each other."""
    keep = ("input_ids", "attention_mask", "position_ids")
    return {k: v for k, v in batch.items() if k in keep} | {"use_cache": False}


def model_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                 chunk: int = LOSS_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss, 0/1 weight) of `batch` through `model`, as `token_losses` of its logits
    would give, with the head applied `chunk` loss positions at a time (`chunked_losses`).

    `model` is an HF causal LM, a peft wrapper of one, or the DeepSpeed engine around either:
    the engine's own forward runs (ZeRO-3 fetches parameters from its hooks), and the
    head is the wrapped model's output embeddings module.
    """
    head = output_head(model)
    calls = head_calls(head, int((batch["labels"][:, 1:] != IGNORE).sum()), chunk)
    out = model(**forward_inputs(batch), output_hidden_states=True, logits_to_keep=1)
    # hidden_states[-1] is the final norm's output, what the head reads (transformers'
    # capture_outputs ties it to last_hidden_state)
    return chunked_losses(head, out.hidden_states[-1], batch["labels"], chunk, calls)


def head_calls(head: torch.nn.Module, positions: int, chunk: int) -> int:
    """How many chunks (head calls) this micro-batch takes: the most any rank needs when the
    head is ZeRO-3-partitioned. Each call gathers its weight, a collective: a rank with 1,500
    loss positions (2 calls) beside one with 300 (1 call) breaks gloo's pairing ("Connection
    reset by peer", measured at 2 ranks) or hangs. One all-reduce of an int per micro-batch."""
    calls = max(1, -(-positions // chunk))
    partitioned = any(hasattr(p, "ds_id") for p in head.parameters())
    if partitioned and dist.is_initialized() and dist.get_world_size() > 1:
        most = torch.tensor([calls], dtype=torch.int64)  # a CPU tensor: gloo (cpu:gloo,cuda:nccl)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        calls = int(most)
    return calls


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The LM head module of an HF model, behind a DeepSpeed engine (`.module`) and peft."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine's model; HF and peft have none
    head = inner.get_output_embeddings()
    assert head is not None, f"{type(inner).__name__} has no output embeddings (LM head)"
    return head


def chunked_losses(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                   chunk: int = LOSS_CHUNK, calls: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_losses(head(hidden), labels)` computed on `chunk` loss positions at a time.

    hidden: [batch, seq, hidden], labels: [batch, seq]. Positions without a loss get 0 and no
    gradient, as in `token_losses`. With more than one chunk each chunk is checkpointed: backward
    recomputes its logits, so at most one chunk's fp32 logits exist at any time. `calls` (at
    least what the positions need; `head_calls`) makes the head run that many times, the last
    ones on empty chunks if need be, so that every ZeRO-3 rank gathers its weight alike.
    """
    target = labels[:, 1:]
    mask = target != IGNORE
    rows = hidden[:, :-1][mask]  # [loss positions, hidden]: a copy of only those positions
    wanted = target[mask]
    needed = max(1, -(-wanted.shape[0] // chunk))  # at 0 positions one empty call: a graph
    calls = needed if calls is None else calls
    assert calls >= needed, f"{calls} head calls cannot cover {wanted.shape[0]} positions"
    recompute = calls > 1 and torch.is_grad_enabled()
    parts = []
    for start in range(0, calls * chunk, chunk):
        piece = (head, rows[start:start + chunk], wanted[start:start + chunk])
        # determinism_check="none": under ZeRO-3 a frozen head (LoRA) is saved as the parameter
        # itself, which DeepSpeed has re-partitioned (shape [0]) by the time torch compares it
        # with the original forward's; the backward still reads it gathered (the head's
        # pre-backward hook gathers it again before its matmul's backward unpacks it)
        parts.append(checkpoint(_chunk_losses, *piece, use_reentrant=False,
                                determinism_check="none") if recompute
                     else _chunk_losses(*piece))
    losses = torch.zeros(target.shape, dtype=torch.float32, device=hidden.device)
    return losses.masked_scatter(mask, torch.cat(parts)), mask


def _chunk_losses(head: torch.nn.Module, rows: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """fp32 cross-entropy of one chunk: only this chunk's logits are upcast."""
    return F.cross_entropy(head(rows).float(), wanted, reduction="none")


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss of predicting labels[t+1] from position t, and its 0/1 weight, from the full
    logits (the reference `chunked_losses` matches; benchmarks/training.py times it)."""
    target = labels[:, 1:]
    mask = target != IGNORE
    losses = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        target.clamp(min=0).reshape(-1),
        reduction="none",
    ).view_as(target)
    return losses * mask, mask


def pool_sums(losses: torch.Tensor, mask: torch.Tensor, pool_ids: torch.Tensor,
              n_pools: int) -> torch.Tensor:
    """[n_pools, 2]: summed loss and token count per pool (detached, for metrics)."""
    pools = pool_ids[:, 1:][mask]
    out = torch.zeros(n_pools, 2, dtype=torch.float64, device=losses.device)
    out[:, 0].index_add_(0, pools, losses[mask].detach().double())
    out[:, 1].index_add_(0, pools, torch.ones_like(pools, dtype=torch.float64))
    return out
