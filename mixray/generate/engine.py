"""The one small interface every generation engine implements (vLLM, HF, HTTP), and row seeds.

An engine takes a batch of chat prompts, the sampling settings and one seed per prompt, and
returns one `Completion` per prompt, in order. An engine that can fail one prompt without failing
the batch (HTTP) returns that prompt's completion with ``finish_reason="error"`` and the reason
in ``error``; an engine that fails the whole batch raises, and the stage retries row by row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from mixray.generate.config import SamplingConfig

Messages = list[dict[str, str]]
SEED_BITS = 31  # vLLM and OpenAI-compatible servers take a signed 32-bit seed


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: Literal["stop", "length", "error"]
    error: str | None = None  # why, when finish_reason is "error"
    # what a server sent in a field of its own (an http engine: reasoning_content), and its
    # token count where the server said it; else the stage splits `text` (generate.reasoning)
    reasoning: str | None = None
    reasoning_tokens: int | None = None


class Engine(Protocol):
    def generate(self, prompts: list[Messages], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        """One completion per chat prompt, in order. ``seeds``: one per prompt (`row_seed`);
        None: derived from ``sampling.seed``."""
        ...

    def close(self) -> None:
        """Release the model and whatever the engine started (its GPU memory, processes,
        connections) now: the next engine on the same GPUs starts right after."""
        ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens of ``text`` in the model's tokenizer (a row's reasoning); None where the
        engine has none (http)."""
        ...


def row_seed(seed: int, problem_id: str, sample_idx: int) -> int:
    """The seed of one (problem, sample) row: a function of the row alone, never of the batch it
    lands in, so a resumed run samples a row as the first run would have (engines that seed per
    request: vLLM, HTTP), and the n samples of one problem differ."""
    digest = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> (32 - SEED_BITS)


def batch_seed(seeds: Sequence[int]) -> int:
    """One seed for a whole batch, from its rows' seeds (for engines with one generator per
    batch, like HF `generate`): two batches of different rows never replay the same stream."""
    digest = hashlib.sha256(",".join(map(str, seeds)).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> (32 - SEED_BITS)
