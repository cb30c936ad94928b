"""The one small interface every generation engine implements (vLLM, HF, HTTP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from mixray.config import SamplingConfig

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: Literal["stop", "length", "error"]


class Engine(Protocol):
    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[Completion]:
        """One completion per chat prompt, in order."""
        ...
