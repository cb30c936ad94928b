"""Final-answer extraction: the last ``\\boxed{}``, else a ``Final Answer:`` line, else the last number."""

from __future__ import annotations

import re

_FINAL = re.compile(r"final answer\s*[:：]\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced: the completion was cut off inside the box


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed:
        return boxed
    finals = _FINAL.findall(text)
    if finals:
        answer = finals[-1].strip().rstrip(".").strip("$ ")
        if answer:
            return answer
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None
