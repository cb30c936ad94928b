"""The loss on the held-out validation rows (mix/validation.py): per pool, and val_loss, the
unweighted mean over pools, so that it compares trials whatever their mix and pool sizes.

Every rank computes all of it: the set is small (a few problems times the pools), and under ZeRO-3
every rank must take part in each forward anyway. No all-reduce, so ranks agree by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow.parquet as pq
import torch

from mixray.train.data import Example, Responses, build_examples, collate, to_device
from mixray.train.loss import forward_inputs, pool_sums, token_losses


@dataclass(frozen=True)
class Validation:
    examples: list[Example]
    pools: list[str]
    micro_batch_size: int
    pad_id: int

    @classmethod
    def load(cls, path: str, tokenizer, *, system: str, max_length: int, overlong: str,
             max_dropped_fraction: float, micro_batch_size: int, pad_id: int,
             responses: Responses = "template") -> Validation:
        rows = pq.read_table(path).to_pylist()
        pools = sorted({r["pool"] for r in rows})
        examples, _, _ = build_examples(tokenizer, rows, system=system, max_length=max_length,
                                        overlong=overlong,
                                        max_dropped_fraction=max_dropped_fraction, pools=pools,
                                        responses=responses)
        return cls(examples, pools, micro_batch_size, pad_id)

    @torch.no_grad()
    def losses(self, engine) -> dict[str, float]:
        """{"val_loss": mean over pools, "val_loss/<pool>": mean token loss of that pool}."""
        engine.eval()
        sums = torch.zeros(len(self.pools), 2, dtype=torch.float64)
        for i in range(0, len(self.examples), self.micro_batch_size):
            batch = to_device(collate(self.examples[i:i + self.micro_batch_size], self.pad_id),
                              engine.device)
            losses, mask = token_losses(engine(**forward_inputs(batch)).logits, batch["labels"])
            sums += pool_sums(losses, mask, batch["pool_ids"], len(self.pools)).cpu()
        engine.train()
        per_pool = {f"val_loss/{p}": loss / count
                    for p, (loss, count) in zip(self.pools, sums.tolist(), strict=True) if count}
        assert per_pool, "validation rows always hold response tokens (build_examples)"
        return {"val_loss": math.fsum(per_pool.values()) / len(per_pool)} | per_pool
