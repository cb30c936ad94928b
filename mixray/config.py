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


class MixConfig(Strict):
    """A two-pool mix: `long_share` of the samples come from the `long` pool, the rest from `short`."""

    long_pool: str = "long"
    short_pool: str = "short"
    long_share: float = Field(0.2, ge=0.0, le=1.0, description="Share of samples from long_pool.")
    seed: int = 0


class TrainConfig(Strict):
    zero_stage: Literal[0, 1, 2, 3] = 2
    dtype: Literal["fp32", "bf16"] = "fp32"
    num_workers: int = Field(2, ge=1)
    micro_batch_size: int = Field(2, ge=1, description="Samples per worker per step.")
    max_steps: int = Field(8, ge=1, description="Optimizer steps; the manifest is cycled if needed.")
    lr: float = Field(1e-5, gt=0)
    max_length: int = Field(512, ge=16, description="Tokens per sample; longer ones are truncated.")
    system_prompt: str = "You are a helpful assistant."
    seed: int = 42


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
        for field in ("long_pool", "short_pool"):
            pool = getattr(self.mix, field)
            if pool not in self.teachers:
                raise ValueError(
                    f"mix.{field} is {pool!r}, which is not a teacher label; "
                    f"teachers are {sorted(self.teachers)}"
                )
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

    def cpus_per_trial(self) -> float:
        return TRIAL_CPU + self.train.num_workers * self.resources.cpus_per_train_worker

    def max_concurrent_trials(self, cluster_cpus: float) -> int:
        """As many trials as the declared resources fit, so trials never wait on each other."""
        fit = max(1, math.floor(cluster_cpus / self.cpus_per_trial() + 1e-9))
        return min(fit, self.search.max_concurrent_trials or fit, len(self.trials()))


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
