"""SFT data: the loss mask covers the assistant response (and its end token) and nothing else."""

from __future__ import annotations

import pytest

from mixray.models import train_tiny_tokenizer
from mixray.train.data import IGNORE, batch_indices, collate, encode


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer()


def test_mask_is_exactly_the_response(tokenizer) -> None:
    ex = encode(tokenizer, "You are a helpful assistant.", "What is 2 + 3?", "2 + 3 = 5. \\boxed{5}", 512)
    assert len(ex.input_ids) == len(ex.labels) and not ex.truncated
    first = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
    assert all(lab == IGNORE for lab in ex.labels[:first])
    assert ex.labels[first:] == ex.input_ids[first:]
    response = tokenizer.decode(ex.input_ids[first:])
    assert response.startswith("2 + 3 = 5. \\boxed{5}")
    assert "<|im_end|>" in response  # the student learns to stop
    prompt = tokenizer.decode(ex.input_ids[:first])
    assert "What is 2 + 3?" in prompt and prompt.endswith("assistant\n")


def test_truncation_is_flagged(tokenizer) -> None:
    ex = encode(tokenizer, "", "q", "a very long answer " * 50, 32)
    assert ex.truncated and len(ex.input_ids) == 32


def test_collate_pads_right_and_masks_padding(tokenizer) -> None:
    a = encode(tokenizer, "", "1 + 1?", "2", 64)
    b = encode(tokenizer, "", "10 + 10?", "20, since 10 + 10 = 20", 64)
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    width = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == (2, width)
    assert int(batch["attention_mask"][0].sum()) == len(a.input_ids)
    assert (batch["labels"][0, len(a.input_ids):] == IGNORE).all()


def test_batches_are_a_function_of_the_step() -> None:
    seen = [i for step in range(3) for rank in range(2) for i in batch_indices(step, rank, 2, 2, 10)]
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # disjoint across ranks, cycled
    assert batch_indices(5, 1, 2, 2, 10) == batch_indices(5, 1, 2, 2, 10)
