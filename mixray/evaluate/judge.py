"""The optional LLM judge: a second look at answers that math-verify calls wrong.

The paper re-judged mismatches with Qwen2.5-32B-Instruct answering "True" or "False"
(PAPER.md, "Evaluation"); PAPER.md does not quote the judge's prompt, so `JUDGE_PROMPT` is
written to the same contract. Only samples with an extracted answer that failed verification are
judged (no answer stays wrong, as in the paper), and never on ``last_number`` benchmarks (GSM8K
is scored by its last number alone). A verdict that is neither True nor False -- a judge that
rambles, a random test model -- is ``undecided``: counted, and the sample stays wrong.

The judge runs through the same generation stage as the evaluated model, on any of its engines:
a model spec on hf or vllm, or a served model over http (the paper's 32B judge on a server).
This module holds the prompt and the parsing; its config is `mixray.evaluate.config.JudgeConfig`
and `mixray.evaluate.stage` runs it.
"""

from __future__ import annotations

import re
from typing import Literal

Verdict = Literal["true", "false", "undecided"]

JUDGE_PROMPT = (
    "You are checking a student's final answer to a math problem against the reference answer. "
    "Reply with exactly one word: True if the student's answer is mathematically equivalent to "
    "the reference answer, False otherwise.\n"
    "Problem: {problem}\nReference answer: {gold}\nStudent's answer: {answer}\nVerdict:"
)
# The verdict is the first word, after any markdown or quoting ("**True**", "'False'.").
_VERDICT = re.compile(r"^[\W_]*(true|false)\b", re.IGNORECASE)


def judge_prompt(template: str, problem: str, gold: str, answer: str) -> str:
    return template.format(problem=problem, gold=gold, answer=answer)


def parse_verdict(text: str | None) -> Verdict:
    """'True'/'False' (first word, any case, markdown allowed) or 'undecided'."""
    match = _VERDICT.match(text or "")
    return match.group(1).lower() if match else "undecided"  # type: ignore[return-value]
