"""Token-weighted causal-LM loss, overall and per pool (teacher label), from logits.

Computed here rather than by the model's `labels=` path so that one forward pass gives both the
loss to optimise and the per-pool sums the loop reports (train_loss/long, train_loss/short).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixray.train.data import IGNORE


def forward_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys the model takes: labels and pool_ids stay with the loss. use_cache=False matters:
    with a KV cache, transformers 5.19 skips packed-sequence detection (masking_utils
    `_preprocess_mask_arguments`) and packed samples would attend to each other."""
    keep = ("input_ids", "attention_mask", "position_ids")
    return {k: v for k, v in batch.items() if k in keep} | {"use_cache": False}


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss of predicting labels[t+1] from position t, and its 0/1 weight."""
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
