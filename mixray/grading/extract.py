"""Final-answer extraction.

``extract_answer`` (MATH-style): the last ``\\boxed{}``, else a ``Final Answer:`` line, else the
last number. ``last_number`` (GSM8K-style): the last plain number, thousands separators removed.
"""

from __future__ import annotations

import re

_FINAL = re.compile(r"final answer\s*[:：]\s*(.+)", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\$([^$]+)\$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
# A minus sign counts only when it is not a hyphen between words or numbers ("3-4", "x-1") nor a
# list bullet ("- 5 apples"); a comma counts only as a thousands separator (groups of exactly three
# digits), so "1,2,3" is a list.
_GSM8K_NUMBER = re.compile(
    r"(?:(?<![\w)])-)?(?:\$\s*)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)|(?<![\w.])\.\d+"
)
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-"})  # unicode minus and en dash


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text):
        if text[j] == "\\":
            j += 2  # escaped: "\{" of a piecewise "\left\{ ... \right." is not a group
            continue
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
        j += 1
    return None  # unbalanced: the completion was cut off inside the box


def _final_answer_line(text: str) -> str | None:
    finals = _FINAL.findall(text)
    if not finals:
        return None
    line = finals[-1]
    # Minerva style: "Final Answer: The final answer is $5$. I hope it is correct." -> "5".
    span = _MATH_SPAN.search(line)
    answer = span.group(1) if span else line.strip().rstrip(".")
    return answer.strip("$ ") or None


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed:
        return boxed
    final = _final_answer_line(text)
    if final:
        return final
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def last_number(text: str) -> str | None:
    """The last number in ``text`` as a plain decimal: ``"$1,234.50 total"`` -> ``"1234.50"``.

    Currency signs, thousands separators and trailing units are dropped; a leading minus is kept.
    """
    numbers = _GSM8K_NUMBER.findall(text.translate(_MINUS_SIGNS))
    if not numbers:
        return None
    return re.sub(r"[\s$,]", "", numbers[-1])
