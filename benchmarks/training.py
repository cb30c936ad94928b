"""Training-data efficiency: the share of non-padding tokens with and without packing.

A Mix-Long-like manifest (20% long responses about 3x the length of short ones, PAPER.md) is
encoded with the tiny model's ChatML tokenizer and batched exactly as the loop batches it
(`make_units` + `collate_units` over `batch_indices`). It reports, per packing mode, the share of
batch cells that hold a sample token, and forward+backward tokens/s of the tiny model on the first
batches. Writes benchmarks/results/training.json.

    python -m benchmarks.training [--rows 400] [--max-length 1024] [--micro 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

import torch

from mixray import logs
from mixray.models import resolve
from mixray.train.data import batch_indices, build_examples, collate_units, make_units, real_tokens
from mixray.train.loss import forward_inputs, token_losses

log = logging.getLogger("mixray.benchmarks.training")
OUT = Path(__file__).parent / "results" / "training.json"


def mix_rows(n: int, seed: int = 0) -> list[dict]:
    """20% long / 80% short; a short response has 15-45 sentences' worth of ~4 tokens, long 3x."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        long = rng.random() < 0.2
        words = rng.randint(15, 45) * (3 if long else 1)
        text = " ".join(f"{rng.randint(0, 19)} + {rng.randint(0, 19)}" for _ in range(words))
        rows.append({"prompt": f"Problem {i}: add them up.", "completion": text,
                     "pool": "long" if long else "short"})
    return rows


def measure(examples, packing: str, max_length: int, micro: int, pad_id: int, model) -> dict:
    units = make_units(examples, packing, max_length)
    steps = -(-len(units) // micro)  # one pass over the units, as the loop would see them
    real = cells = 0
    batches = []
    for step in range(steps):
        batch = collate_units(examples, [units[i] for i in batch_indices(step, 0, 1, micro,
                                                                         len(units))], pad_id, packing)
        real, cells = real + real_tokens(batch), cells + batch["input_ids"].numel()
        batches.append(batch)
    timed, started = batches[:3], time.perf_counter()
    for batch in timed:
        losses, mask = token_losses(model(**forward_inputs(batch)).logits, batch["labels"])
        (losses.sum() / mask.sum()).backward()
    seconds = time.perf_counter() - started
    return {"units": len(units), "batches": steps, "real_token_share": round(real / cells, 4),
            "tokens_per_s_tiny": round(sum(real_tokens(b) for b in timed) / seconds, 1)}


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--micro", type=int, default=4, help="units per micro-batch")
    args = parser.parse_args()
    logs.configure()
    torch.set_num_threads(1)
    path = resolve("tiny-random")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    examples, _, stats = build_examples(
        tok, mix_rows(args.rows), system="You are a helpful assistant.",
        max_length=args.max_length, overlong="drop", max_dropped_fraction=0.0,
        pools=["long", "short"])
    lengths = {p: [len(e.input_ids) for e in examples if e.pool == i]
               for i, p in enumerate(["long", "short"])}
    result = {
        "rows": args.rows, "max_length": args.max_length, "micro_batch_size": args.micro,
        "mean_tokens": {p: round(sum(v) / len(v), 1) for p, v in lengths.items()},
        "data": stats.as_dict(),
        **{f"packing_{mode}": measure(examples, mode, args.max_length, args.micro,
                                      tok.pad_token_id, model) for mode in ("none", "greedy")},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    log.info("training benchmark: %s", json.dumps(result))


if __name__ == "__main__":
    main()
