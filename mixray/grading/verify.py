"""Answer checking with math-verify, safe inside threads and Ray actors.

math-verify's default timeouts use ``signal.alarm``, which raises in threads and threaded actors
(and, where errors are swallowed, silently scores 0 — STACK.md). We turn them off and bound the
work ourselves by the size of what is parsed: extracted answers longer than MAX_ANSWER_CHARS are
counted as wrong instead of being parsed. A check takes about 1.2 ms.

Before parsing we rewrite two forms math-verify misreads (tests/unit/test_answer_forms.py):
digit groups separated by a LaTeX space (``1\\,000`` parses as ``1*0`` and then equals ``0``) and
the unicode degree sign (``30°`` does not parse as a number).

An answer or gold that math-verify cannot parse is compared as exact (stripped) text instead;
``verify_answer`` says which comparison decided, so curation and evaluation count those
(``string_fallback``) rather than pass them off as verified.

``is_correct_gsm8k`` compares GSM8K answers numerically, without math-verify.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from importlib.metadata import version
from typing import Literal

from math_verify import parse, verify

from mixray.grading.extract import last_number

MAX_ANSWER_CHARS = 300
Check = Literal["math_verify", "string", "number"]
"""How an answer was compared with its gold: by math-verify, as text when either side does not
parse (the fallback that gets counted), or as GSM8K numbers (``is_correct_gsm8k``)."""
# -mixray-2: digit-group spaces and the degree sign are normalised before parsing.
VERIFIER_VERSION = f"math-verify-{version('math-verify')}-mixray-2"

# "12\,345", "12\ 345", "12~345", "12\;345": a space before exactly three digits groups thousands.
_DIGIT_GROUP_SPACE = re.compile(r"(?<=\d)(?:\\[,;: !]|~)(?=\d{3}(?!\d))")
# "30°", "30°C", "30^{\circ}C": the trailing C/F would otherwise parse as a variable factor.
_DEGREES = re.compile(r"(?:°|\^\s*\{?\s*\\circ\s*\}?)(?:\s*(?:\\text\{\s*)?[CF]\b\}?)?")


def _normalize(answer: str) -> str:
    answer = _DIGIT_GROUP_SPACE.sub("", answer)
    return _DEGREES.sub(r"^\\circ", answer)


def _parse(answer: str):
    return parse(f"\\boxed{{{_normalize(answer)}}}", parsing_timeout=None)


def verify_answer(predicted: str | None, gold: str) -> tuple[bool, Check | None]:
    """(whether ``predicted`` equals ``gold``, how that was decided). None: nothing was compared,
    since there is no answer or it is longer than MAX_ANSWER_CHARS (then it counts as wrong)."""
    if not predicted or len(predicted) > MAX_ANSWER_CHARS:
        return False, None
    gold_expr = _parse(gold)
    pred_expr = _parse(predicted)
    if not gold_expr or not pred_expr:
        return predicted.strip() == gold.strip(), "string"
    return bool(verify(gold_expr, pred_expr, timeout_seconds=None)), "math_verify"


def is_correct(predicted: str | None, gold: str) -> bool:
    return verify_answer(predicted, gold)[0]


def _as_fraction(number: str) -> Fraction:
    return Fraction(Decimal(number))  # exact: "1234.50" == "1234.5", no float rounding


def is_correct_gsm8k(predicted: str | None, gold: str) -> bool:
    """Whether the last number of ``predicted`` equals the last number of ``gold``.

    ``gold`` may be a bare number or a full GSM8K solution ending ``#### 72``; ``predicted`` is an
    extracted answer or a whole response (then its last number counts, as in GSM8K harnesses).
    """
    gold_number = last_number(gold)
    if gold_number is None:
        raise ValueError(f"GSM8K gold answer has no number: {gold!r}")
    if not predicted:
        return False
    pred_number = last_number(predicted)
    return pred_number is not None and _as_fraction(pred_number) == _as_fraction(gold_number)
