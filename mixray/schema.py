"""The one base of every config model: the stages' sections, the sweep that composes them, the
search space and the benchmark specs.

Unknown keys are refused (``extra="forbid"``), so a typo fails before any work starts; models are
frozen, so a validated config cannot drift from what was checked and keyed. A leaf: it imports
nothing from mixray, so every stage's config module may build on it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def count_or_all(value: int | str, what: str = "") -> int | str:
    """A size field's check (problems' sizes, the mix budget): 'all' or a count >= 1."""
    if value != "all" and value < 1:
        raise ValueError(f"{what}must be 'all' or a count >= 1, got {value}")
    return value
