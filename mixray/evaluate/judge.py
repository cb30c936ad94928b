"""The optional LLM judge: a second look at answers that math-verify calls wrong.

The paper re-judged mismatches with Qwen2.5-32B-Instruct answering "True" or "False"
(PAPER.md, "Evaluation"); PAPER.md does not quote the judge's prompt, so `JUDGE_PROMPT` is
written to the same contract. Only samples with an extracted answer that failed verification are
judged (no answer stays wrong, as in the paper), and never on ``last_number`` benchmarks (GSM8K
is scored by its last number alone). A verdict that is neither True nor False -- a judge that
rambles, a random test model -- is ``undecided``: counted, and the sample stays wrong.

The judge runs through the same generation stage as the evaluated model, on any of its engines:
a model spec on hf or vllm, or a served model over http (the paper's 32B judge on a server).
This module holds the config, the prompt and the parsing; `mixray.evaluate.stage` runs it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

Verdict = Literal["true", "false", "undecided"]

JUDGE_PROMPT = (
    "You are checking a student's final answer to a math problem against the reference answer. "
    "Reply with exactly one word: True if the student's answer is mathematically equivalent to "
    "the reference answer, False otherwise.\n"
    "Problem: {problem}\nReference answer: {gold}\nStudent's answer: {answer}\nVerdict:"
)
# The verdict is the first word, after any markdown or quoting ("**True**", "'False'.").
_VERDICT = re.compile(r"^[\W_]*(true|false)\b", re.IGNORECASE)


class JudgeConfig(BaseModel):
    """An LLM that re-judges answers math-verify rejected (greedy, a few tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        None, description="A model spec for the hf and vllm engines: a hub id, a local dir, "
        "'tiny-random'. An http judge leaves it out: engine.model names the served model.",
    )
    # Typed as mixray.config.EngineConfig by the validator below: mixray.config imports this
    # module, so the type cannot be imported here when the class is built.
    engine: Any = Field(
        None, validate_default=True, description="{kind: hf} (default) | {kind: vllm, ...} | "
        "{kind: http, base_url, model, ...} (see EngineConfig in mixray/config.py).",
    )
    gpus_per_replica: float = Field(0.0, ge=0.0, description="GPUs per judge replica "
                                    "(placement only); hf runs on cuda when it is > 0.")
    prompt: str = Field(JUDGE_PROMPT, description="Template with {problem}, {gold} and {answer}.")
    system_prompt: str | None = Field(None, description="The judge's system turn, if any.")
    max_new_tokens: int = Field(8, ge=1, le=1024, description="The verdict is the first word.")
    batch_size: int = Field(8, ge=1, description="Prompts per engine call (speed only).")

    @field_validator("prompt")
    @classmethod
    def _fields(cls, prompt: str) -> str:
        missing = [f for f in ("{problem}", "{gold}", "{answer}") if f not in prompt]
        if missing:
            raise ValueError(f"the judge prompt must contain {missing}")
        try:
            prompt.format(problem="", gold="", answer="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"the judge prompt is not a valid template ({e}); write literal "
                             "braces as {{ and }}") from None
        return prompt

    @field_validator("engine", mode="before")
    @classmethod
    def _engine(cls, engine: Any) -> Any:
        from mixray.config import EngineConfig

        return TypeAdapter(EngineConfig).validate_python({"kind": "hf"} if engine is None
                                                         else engine)

    @model_validator(mode="after")
    def _model_fits_engine(self) -> JudgeConfig:
        if self.engine.kind == "http":
            if self.model is not None:
                raise ValueError("an http judge's model is engine.model (the served name); "
                                 "leave the judge's model out")
        elif self.model is None:
            raise ValueError(f"a judge with engine {self.engine.kind!r} needs a model")
        return self


def judge_prompt(template: str, problem: str, gold: str, answer: str) -> str:
    return template.format(problem=problem, gold=gold, answer=answer)


def parse_verdict(text: str | None) -> Verdict:
    """'True'/'False' (first word, any case, markdown allowed) or 'undecided'."""
    match = _VERDICT.match(text or "")
    return match.group(1).lower() if match else "undecided"  # type: ignore[return-value]
