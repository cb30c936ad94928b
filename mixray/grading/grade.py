"""Grading one completion by answer format: extract its answer, then verify it.

`score_completion` is what curation runs on every teacher row (``lenient``) and evaluation on
every sample (the benchmark's format); `rates.sample_rates` summarises what it returns.
"""

from __future__ import annotations

from typing import Literal

from mixray.grading.extract import extract_answer, last_boxed, last_number
from mixray.grading.verify import Check, is_correct_gsm8k, verify_answer

AnswerFormat = Literal["boxed", "lenient", "last_number"]
"""How a completion's answer is read and checked:
``boxed`` the last ``\\boxed{}`` only, checked with math-verify; no box is no answer (the paper);
``lenient`` the last ``\\boxed{}``, else a ``Final Answer:`` line, else the last number (what
curation uses; small models rarely box), checked with math-verify;
``last_number`` the last number, compared exactly (GSM8K)."""


def score_completion(completion: str, gold: str, answer_format: AnswerFormat
                     ) -> tuple[str | None, bool, Check | None]:
    """(extracted answer or None, whether it verifies against ``gold``, how it was compared:
    None when there was no answer to compare)."""
    if answer_format == "last_number":
        extracted = last_number(completion)
        return extracted, is_correct_gsm8k(extracted, gold), "number" if extracted else None
    extracted = last_boxed(completion) if answer_format == "boxed" else extract_answer(completion)
    extracted = extracted or None  # an empty \boxed{} is no answer
    return extracted, *verify_answer(extracted, gold)
