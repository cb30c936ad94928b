"""Chat template, tokenization and response-only loss mask for SFT rows.

Prompt and response are tokenized separately and concatenated, so the mask boundary is exact even
where a BPE merge could straddle it. Rows longer than max_length are truncated (the response tail
goes first) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode(tokenizer, system: str, prompt: str, completion: str, max_length: int) -> Example:
    turns = [{"role": "system", "content": system}] if system else []
    turns.append({"role": "user", "content": prompt})
    prefix = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        turns + [{"role": "assistant", "content": completion}], tokenize=False
    )
    assert full.startswith(prefix), "chat template renders the prompt differently with a response"
    p_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(full[len(prefix):], add_special_tokens=False)["input_ids"]
    ids = (p_ids + r_ids)[:max_length]
    labels = ([IGNORE] * len(p_ids) + r_ids)[:max_length]
    return Example(ids, labels, truncated=len(p_ids) + len(r_ids) > max_length)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attn[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def batch_indices(step: int, rank: int, world: int, micro: int, n_rows: int) -> list[int]:
    """Manifest rows for one rank at one step: the global batch is a contiguous, cycled window.

    A function of the step only, so a resumed run sees exactly the rows it would have seen.
    """
    start = (step * world + rank) * micro
    return [(start + i) % n_rows for i in range(micro)]
