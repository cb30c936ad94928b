"""TrainConfig: global batch = micro x workers x accumulation, epochs or max_steps, the paper's
recipe is expressible; the loop's learning-rate schedule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mixray.config import TrainConfig


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
    from mixray.train.loop import lr_factor

    assert [round(lr_factor(s, 5, 0.0, "cosine"), 3) for s in range(5)] == \
        [1.0, 0.905, 0.655, 0.345, 0.095]
    warm = [lr_factor(s, 10, 0.2, "cosine") for s in range(10)]
    assert warm[0] < warm[1] < warm[2] == 1.0 and warm[-1] < 0.05
    assert lr_factor(7, 10, 0.0, "constant") == 1.0
