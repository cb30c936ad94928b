"""The sweep schema: one strict, typed model of a sweep file.

Every section refuses unknown keys (``extra="forbid"``), so a typo fails before any work starts.
`load_sweep` reads YAML, applies ``--set a.b=v`` overrides and turns pydantic's errors into one
`SweepFileError` that names the file, the key path and what was expected.

Which fields change an artifact's bytes (and so belong in its key) is decided by the stages, via
the ``*_key`` helpers next to the models: resources and placement never enter a key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mixray.artifacts import spec_key

# The paper's teacher and evaluation prompt (PAPER.md, "Data"), used as a str.format template.
PAPER_PROMPT = (
    "Solve the following math problem. Present the final answer in the format: "
    "Final Answer: \\boxed{{your_answer}}.\nProblem: {problem}\nAnswer:"
)


# What a Tune trial itself reserves: its TorchTrainer asks for the workers' CPUs on its own.
TRIAL_CPU = 0.01


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProblemsConfig(Strict):
    """Training problems for the teachers and held-out problems for evaluation."""

    source: Literal["reasoning_gym"] = "reasoning_gym"
    task: str = Field("basic_arithmetic", description="A reasoning-gym dataset name.")
    task_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the reasoning-gym dataset."
    )
    train_size: int = Field(64, ge=1, description="Problems the teachers solve.")
    eval_size: int = Field(32, ge=1, description="Held-out problems the students are scored on.")
    seed: int = 0

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        import reasoning_gym  # noqa: F401  (imported for its registry)
        from reasoning_gym.factory import DATASETS

        if task not in DATASETS:
            close = sorted(n for n in DATASETS if task.split("_")[0] in n)[:8]
            raise ValueError(f"unknown reasoning-gym task {task!r}; similar: {close or 'none'}")
        return task


class SamplingConfig(Strict):
    max_new_tokens: int = Field(256, ge=1, le=65536)
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0


class TeacherConfig(Strict):
    """One teacher: a model plus a prompt style. Its label (the key in `teachers`) names its pool."""

    model: str = Field(description="A model spec: 'smollm2-135m-instruct', 'tiny-random', a dir or hub id.")
    style: Literal["long", "short"] = Field(
        description="'long' asks for a detailed step-by-step solution, 'short' for a brief one."
    )
    prompt: str = Field(PAPER_PROMPT, description="User-turn template with a {problem} field.")
    sampling: SamplingConfig = SamplingConfig()
    batch_size: int = Field(8, ge=1, description="Prompts per engine call (speed only).")
    replicas: int = Field(1, ge=1, description="Engine actors in the Ray Data pool (speed only).")

    @field_validator("prompt")
    @classmethod
    def _has_problem_field(cls, prompt: str) -> str:
        if "{problem}" not in prompt:
            raise ValueError("the prompt template must contain the field {problem}")
        return prompt


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
        None, ge=1, description="Micro-batches per optimizer step; omitted: from global_batch_size, else 1."
    )
    max_steps: int | None = Field(
        8, ge=1, description="Optimizer steps; the manifest is cycled if needed. Exclusive with epochs."
    )
    epochs: float | None = Field(None, gt=0, description="Passes over the manifest, instead of max_steps.")
    lr: float = Field(1e-5, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of the steps with linear warmup.")
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
    seed: int = 42

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
    """Greedy decoding of the held-out problems by each trained student."""

    prompt: str = Field(PAPER_PROMPT, description="User-turn template; the paper reuses the teachers'.")
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(8, ge=1, description="Prompts per engine call (speed only).")
    replicas: int = Field(1, ge=1, description="Engine actors (speed only).")


class SearchConfig(Strict):
    """The Ray Tune grid. Each combination of values is one trial."""

    long_share: list[float] = Field(default_factory=lambda: [0.0, 0.2], min_length=1)
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Upper bound; the real limit also follows from the resources."
    )

    @field_validator("long_share")
    @classmethod
    def _shares_in_range(cls, shares: list[float]) -> list[float]:
        bad = [s for s in shares if not 0.0 <= s <= 1.0]
        if bad:
            raise ValueError(f"every long_share must lie in [0, 1], got {bad}")
        return shares


class ResourcesConfig(Strict):
    """Placement only: never part of an artifact key."""

    cpus_per_train_worker: float = Field(
        0.49, gt=0, description="Fractional on CPU hosts: Tune does not count Train workers (STACK.md)."
    )
    cpus_per_engine: float = Field(0.5, gt=0, description="CPUs reserved by each generation actor.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per worker process.")


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
        if len(set(self.search.long_share)) > 1 and not self.mix.uses_base_mix():
            raise ValueError("search.long_share varies the base mix mix.pools, but every part of "
                             "mix.schedule has its own weights, so all trials would be alike; "
                             "give search.long_share one value or leave out a phase's weights")
        return self

    @property
    def run_root_path(self) -> Path:
        return Path(self.run_root).expanduser().resolve()

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri or f"sqlite:///{self.run_root_path / 'mlflow.db'}"

    def trials(self) -> list[dict[str, Any]]:
        """The grid, one dict per trial, in a stable order."""
        return [
            {"student": s, "long_share": share}
            for s in self.students
            for share in self.search.long_share
        ]

    def resume_key(self) -> str:
        """What must not change for an interrupted sweep to be resumed: everything but the
        search grid (new points simply run) and placement."""
        return spec_key(self.model_dump(exclude={"search", "resources", "run_root"}))

    def cpus_per_trial(self) -> float:
        return TRIAL_CPU + self.train.num_workers * self.resources.cpus_per_train_worker

    def max_concurrent_trials(self, cluster_cpus: float) -> int:
        """As many trials as the declared resources fit, so trials never wait on each other."""
        fit = max(1, math.floor(cluster_cpus / self.cpus_per_trial() + 1e-9))
        return min(fit, self.search.max_concurrent_trials or fit, len(self.trials()))


def trial_name(trial: dict[str, Any]) -> str:
    """A trial's stable name: its MLflow child run, its output folder, its identity on resume."""
    return f"{Path(trial['student']).name}-long{trial['long_share']:g}"


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
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
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
    """Read and validate a sweep file; raise SweepFileError naming the file and key on any mistake."""
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
