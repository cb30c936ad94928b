"""The `evaluate` section: how each trained student (or any model, `python -m mixray.evaluate`) is
evaluated, and the optional LLM judge.

Benchmarks are typed specs (`mixray.evaluate.benchmarks`); the evaluated model and the judge run
on the generation stage's engines (`mixray.generate.config`).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from mixray.evaluate.benchmarks import BenchmarkSpec, HeldOutBenchmark
from mixray.evaluate.judge import JUDGE_PROMPT
from mixray.generate.config import (
    DEFAULT_MAX_ERROR_RATE,
    PAPER_PROMPT,
    EngineConfig,
    HFEngineConfig,
    has_problem_field,
    replica_gpus,
)
from mixray.schema import Strict


class JudgeConfig(Strict):
    """An LLM that re-judges answers math-verify rejected (greedy, a few tokens)."""

    model: str | None = Field(
        None, description="A model spec for the hf and vllm engines: a hub id, a local dir, "
        "'tiny-random'. An http judge leaves it out: engine.model names the served model.",
    )
    engine: EngineConfig = Field(
        default_factory=HFEngineConfig, description="{kind: hf} (default) | {kind: vllm, ...} | "
        "{kind: http, base_url, model, ...} (see mixray/generate/config.py).",
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

    @model_validator(mode="after")
    def _model_fits_engine(self) -> JudgeConfig:
        if self.engine.kind == "http":
            if self.model is not None:
                raise ValueError("an http judge's model is engine.model (the served name); "
                                 "leave the judge's model out")
        elif self.model is None:
            raise ValueError(f"a judge with engine {self.engine.kind!r} needs a model")
        return self


class EvaluateConfig(Strict):
    """How each trained student (or any model, `python -m mixray.evaluate`) is evaluated.

    Every benchmark's problems are answered through the generation stage's engines, n_samples
    times each (greedy when temperature is 0), scored by its answer_format, optionally re-judged
    by an LLM, and summarised per benchmark (accuracy +- stderr, pass@k, maj@k, lengths,
    truncation and no-answer rates) and as the paper's P, the unweighted mean accuracy.
    """

    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [HeldOutBenchmark()], min_length=1,
        description="Specs (mixray/evaluate/benchmarks.py) or shorthands: 'heldout' (the sweep's "
        "held-out set), a registry name ('math500', 'gsm8k', ...), 'NAME=PATH', 'rg:TASK[:SIZE]'.",
    )
    prompt: str = Field(
        PAPER_PROMPT, description="User-turn template; the paper reuses the teachers'."
    )
    max_new_tokens: int = Field(128, ge=1, le=65536)
    n_samples: int = Field(1, ge=1, le=1024, description="Completions per problem.")
    temperature: float = Field(0.0, ge=0.0, description="0 is greedy decoding (the paper).")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, description="Sampling seed.")
    ks: list[int] | None = Field(
        None, description="k values of pass@k and maj@k; omitted: 1, powers of 2 and n_samples.",
    )
    judge: JudgeConfig | None = Field(
        None, description="An LLM that re-judges answers math-verify rejected; omitted: none.",
    )
    engine: EngineConfig = Field(
        default_factory=HFEngineConfig, description="What runs the evaluated model: {kind: hf} "
        "(default) | {kind: vllm, ...} (the paper evaluated with vLLM).",
    )
    gpus_per_replica: float | None = Field(
        None, ge=0.0, description="GPUs each engine replica reserves (placement only); omitted: "
        "0 for hf, engine.tensor_parallel_size for vllm. hf runs on cuda when it is > 0.",
    )
    samples_to_log: int = Field(
        4, ge=0, description="Problems per benchmark in the sample-completions table.",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per engine call (speed only).")
    replicas: int = Field(1, ge=1, description="Engine actors (speed only).")
    max_error_rate: float = Field(
        DEFAULT_MAX_ERROR_RATE, ge=0.0, le=1.0,
        description="Largest share of samples (and of judge calls) the engine may fail on for "
        "the evaluation to count: above it the evaluation fails (exit 1) instead of scoring "
        "failures as wrong answers, and a rerun regenerates only the failed samples. Below it "
        "failures count as wrong and eval_error_rate reports them.",
    )

    _has_problem_field = field_validator("prompt")(has_problem_field)

    @model_validator(mode="after")
    def _consistent(self) -> EvaluateConfig:
        if self.n_samples > 1 and self.temperature == 0.0:
            raise ValueError(f"n_samples={self.n_samples} with temperature 0 (greedy) gives "
                             "identical samples; set a temperature > 0 or n_samples 1")
        bad_ks = [k for k in self.ks or [] if not 1 <= k <= self.n_samples]
        if bad_ks:
            raise ValueError(f"every k in ks must lie in [1, n_samples={self.n_samples}], "
                             f"got {bad_ks}")
        names = [b.name for b in self.benchmarks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"benchmark names must be unique, repeated: {dupes} (give a "
                             "'name' to tell them apart)")
        return self

    @property
    def gpus(self) -> float:
        """GPUs each replica reserves, defaults resolved."""
        return replica_gpus(self.gpus_per_replica, self.engine)

    @property
    def pass_ks(self) -> list[int]:
        """The k values of pass@k and maj@k."""
        if self.ks:
            return sorted(set(self.ks))
        powers = {2**i for i in range(self.n_samples.bit_length()) if 2**i <= self.n_samples}
        return sorted(powers | {self.n_samples})
