"""The `curate` section: how each teacher's completions are graded and which enter its pool."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mixray.schema import Strict


class CurateConfig(Strict):
    verifier: Literal["math_verify"] = "math_verify"
    keep: Literal["correct", "all"] = Field(
        "correct",
        description="'correct' is rejection sampling; 'all' keeps every response (the no-rejection "
        "ablation, and what lets random test models train).",
    )
