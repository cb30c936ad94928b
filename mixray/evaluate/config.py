"""The `evaluate` section: how each trained student (or any model, `python -m mixray.evaluate`) is
evaluated, and the optional LLM judge.

Benchmarks are typed specs (`mixray.evaluate.benchmarks`); the evaluated model and the judge run
on the generation stage's engines (`mixray.generate.config`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from mixray.evaluate.benchmarks import BenchmarkSpec, HeldOutBenchmark
from mixray.evaluate.judge import JUDGE_PROMPT
from mixray.generate.config import (
    PAPER_PROMPT,
    ModelRun,
    NamedModelRun,
    SamplingConfig,
    has_problem_field,
)

# Keys of earlier sweep files, refused with where they went (a file must say what it means).
MOVED_KEYS = {old: f"evaluate.{old}: moved to evaluate.sampling.{new}" for old, new in [
    ("n_samples", "n"), ("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
    ("max_new_tokens", "max_new_tokens")]}
JUDGE_MOVED_KEYS = {"max_new_tokens": "evaluate.judge.max_new_tokens: moved to "
                                      "evaluate.judge.sampling.max_new_tokens"}


def refuse_moved(data: Any, moved_keys: dict[str, str]) -> Any:
    """Refuse the keys of earlier files by where they went, rather than as unknown keys."""
    if isinstance(data, dict) and (moved := [moved_keys[k] for k in moved_keys if k in data]):
        raise ValueError("; ".join(moved))
    return data


class JudgeConfig(NamedModelRun):
    """An LLM that re-judges answers math-verify rejected: a model run, greedy, a few tokens.
    Its failures are bounded by its own max_error_rate."""

    ROLE: ClassVar[str] = "judge"

    sampling: SamplingConfig = Field(
        SamplingConfig(max_new_tokens=8),
        description="Greedy (temperature 0); the verdict is the first word of max_new_tokens.")
    prompt: str = Field(JUDGE_PROMPT, description="Template with {problem}, {gold} and {answer}.")
    system_prompt: str | None = Field(
        None, min_length=1, description="The judge's system turn, verbatim; omitted: none of "
        "ours, the judge's chat template alone decides (as for teachers).")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return refuse_moved(data, JUDGE_MOVED_KEYS)

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

    @field_validator("sampling")
    @classmethod
    def _greedy(cls, sampling: SamplingConfig) -> SamplingConfig:
        if sampling.temperature > 0:
            raise ValueError(f"the judge is greedy: evaluate.judge.sampling.temperature must be "
                             f"0 (a verdict is not sampled), got {sampling.temperature:g}")
        return sampling


class EvaluateConfig(ModelRun):
    """How each trained student (or any model, `python -m mixray.evaluate`) is evaluated: a model
    run of the evaluated model (which the sweep or the CLI names) and its benchmarks.

    Every benchmark's problems are answered through the generation stage's engines,
    sampling.n times each (greedy when sampling.temperature is 0), scored by its answer_format,
    optionally re-judged by an LLM, and summarised per benchmark (accuracy +- stderr, pass@k,
    maj@k, lengths, truncation and no-answer rates) and as the paper's P, the unweighted mean
    accuracy. Above max_error_rate of failed samples the evaluation fails (exit 1) instead of
    scoring failures as wrong answers; below it they count as wrong and eval_error_rate
    reports them.
    """

    ROLE: ClassVar[str] = "evaluation"

    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [HeldOutBenchmark()], min_length=1,
        description="Specs (mixray/evaluate/benchmarks.py) or shorthands: 'heldout' (the sweep's "
        "held-out set), a registry name ('math500', 'gsm8k', ...), 'NAME=PATH', 'rg:TASK[:SIZE]'.",
    )
    prompt: str = Field(
        PAPER_PROMPT, description="User-turn template; the paper reuses the teachers'."
    )
    sampling: SamplingConfig = Field(
        SamplingConfig(max_new_tokens=128),
        description="{n, temperature, top_p, seed, max_new_tokens}; temperature 0 is greedy "
        "decoding (the paper).")
    ks: list[int] | None = Field(
        None, description="k values of pass@k and maj@k; omitted: 1, powers of 2 and sampling.n.",
    )
    judge: JudgeConfig | None = Field(
        None, description="An LLM that re-judges answers math-verify rejected; omitted: none.",
    )
    samples_to_log: int = Field(
        4, ge=0, description="Problems per benchmark in the sample-completions table.",
    )

    _has_problem_field = field_validator("prompt")(has_problem_field)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return refuse_moved(data, MOVED_KEYS)

    @model_validator(mode="after")
    def _consistent(self) -> EvaluateConfig:
        n = self.sampling.n
        bad_ks = [k for k in self.ks or [] if not 1 <= k <= n]
        if bad_ks:
            raise ValueError(f"every k in ks must lie in [1, sampling.n={n}], got {bad_ks}")
        names = [b.name for b in self.benchmarks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"benchmark names must be unique, repeated: {dupes} (give a "
                             "'name' to tell them apart)")
        return self

    @property
    def pass_ks(self) -> list[int]:
        """The k values of pass@k and maj@k."""
        if self.ks:
            return sorted(set(self.ks))
        n = self.sampling.n
        powers = {2**i for i in range(n.bit_length()) if 2**i <= n}
        return sorted(powers | {n})
