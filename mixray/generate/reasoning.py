"""A thinking model's output in two parts: its reasoning and its answer.

Thinking models (DeepSeek-R1 and its distills, QwQ-32B, Qwen3 in thinking mode, gpt-oss) write
their reasoning first, in a think block (`<think>...</think>`) or, through a server with a
reasoning parser, in a field of their own (`reasoning_content`). Only the answer is graded: a
trace cut inside its reasoning would otherwise be graded on a number from the middle of it.
The generation stage stores both parts of every row (`split`, `columns`), and curation,
evaluation and the judge grade the answer (`graded`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixray.generate.config import ReasoningConfig
from mixray.generate.engine import Completion


@dataclass(frozen=True)
class Split:
    reasoning: str | None  # None: the model did not think (or its run says it does not)
    response: str | None  # the answer; None when the reasoning never closed (no answer)


def split(text: str, cfg: ReasoningConfig, server_reasoning: str | None = None) -> Split:
    """The reasoning and answer of one output (`ReasoningConfig.split` says how), stripped. A
    server's own reasoning field wins: the text is then the answer."""
    if server_reasoning is not None:
        return Split(server_reasoning, text)
    if cfg.split == "none":
        return Split(None, text)
    before, closed, after = text.partition(cfg.close_marker)
    start = before.find(cfg.open_marker)
    if cfg.split == "markers" and start < 0:
        # no block opened: the model did not think (or, closing one it never opened, wrote
        # its reasoning without the open marker)
        return Split(before.strip(), after.strip()) if closed else Split(None, text)
    reasoning = before[start + len(cfg.open_marker):] if start >= 0 else before
    return Split(reasoning.strip(), after.strip() if closed else None)


def graded(row: Mapping[str, Any]) -> tuple[str, str]:
    """(the text graded, the finish reason the rates count) of a generated row: its answer part
    (`response`), and "" (no answer) with finish reason "length" (truncated) where its reasoning
    never closed. A row without a response column (a table written before rows were split)
    is graded on its whole completion."""
    reason = row["finish_reason"]
    if "response" not in row:
        return row["completion"] or "", reason
    if row["response"] is None and reason == "stop":
        return "", "length"
    return row["response"] or "", reason


def columns(outs: list[Completion], cfg: ReasoningConfig,
            count_tokens: Callable[[str], int | None]) -> dict[str, np.ndarray]:
    """The generation stage's completion, reasoning, response and reasoning_tokens columns of a
    batch. The completion is what the model wrote, as a student is trained on it: where a server
    sent the reasoning apart, it is put back in its think block. Reasoning tokens: a server's
    count where it sent one, else the engine's tokenizer's."""
    splits = [split(o.text, cfg, o.reasoning) for o in outs]
    tokens = [o.reasoning_tokens if o.reasoning_tokens is not None or s.reasoning is None
              else count_tokens(s.reasoning) for o, s in zip(outs, splits, strict=True)]
    written = [o.text if o.reasoning is None
               else f"{cfg.open_marker}\n{o.reasoning}\n{cfg.close_marker}\n\n{o.text}"
               for o in outs]
    return {"completion": np.array(written, dtype=object),
            "reasoning": np.array([s.reasoning for s in splits], dtype=object),
            "response": np.array([s.response for s in splits], dtype=object),
            "reasoning_tokens": np.array(tokens, dtype=object)}
