"""The per-sample rates of graded completions: no answer, truncation, engine error.

Curation reports them in ``stats.json``, evaluation per benchmark; both compute them here.
Plain Python on sequences (no math-verify), so the analysis can import evaluation's scoring cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence


def sample_rates(extracted: Sequence[str | None],
                 finish_reasons: Sequence[str]) -> dict[str, float]:
    """``no_answer_rate``, ``truncation_rate`` (finish reason ``length``) and ``error_rate``
    (finish reason ``error``: the engine failed the row) over samples, in parallel sequences.

    No answer is an empty or missing extracted answer from a completion the engine wrote: a
    failed row is an error, not a completion without an answer, so the two rates never overlap.
    """
    n = len(extracted)
    if n == 0 or len(finish_reasons) != n:
        raise ValueError(f"rates need as many finish reasons as answers, at least one; got "
                         f"{n} answers and {len(finish_reasons)} finish reasons")
    no_answer = sum(not answer and reason != "error"
                    for answer, reason in zip(extracted, finish_reasons, strict=True))
    return {"no_answer_rate": no_answer / n,
            "truncation_rate": sum(r == "length" for r in finish_reasons) / n,
            "error_rate": sum(r == "error" for r in finish_reasons) / n}
