"""The sweep schema: one strict, typed model of a sweep file, composed of the stages' sections.

Each stage owns its section next to its code: `problems.config`, `generate.config` (teachers),
`curate.config`, `mix.config`, `train.config`, `evaluate.config`; `search` is `mixray.search`'s.
This module composes them into `SweepConfig`, checks what spans sections (the mix's pools are
teachers, a validation set where val_loss is asked for, every trial valid), and reads files:
`load_sweep` reads YAML, applies ``--set a.b=v`` overrides and turns pydantic's errors into one
`SweepFileError` that names the file, the key path and what was expected. Every section refuses
unknown keys (`mixray.schema.Strict`), so a typo fails before any work starts.

Which fields change an artifact's bytes (and so belong in its key) is decided by the stages:
resources and placement never enter a key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from mixray import cluster
from mixray.artifacts import spec_key
from mixray.cost.config import CostConfig
from mixray.curate.config import CurateConfig
from mixray.evaluate.config import EvaluateConfig
from mixray.generate.config import TeacherConfig
from mixray.generate.job import Placement
from mixray.mix.config import MixSpec
from mixray.problems.config import ProblemsConfig
from mixray.runroot import RunRoot
from mixray.schema import Strict
from mixray.science.config import AnalysisConfig
from mixray.search import LONG_SHARE, SEED, SearchConfig, Trial, set_dotted, trial_name
from mixray.store import default_tracking_uri
from mixray.train.config import TrainConfig

# Train fields that decide only what stays on disk: out of the resume key (SweepConfig.resume_key)
DISK_ONLY = {"keep_checkpoints"}


class NodeTypes(Strict):
    """Which node type runs which work, each named by a custom resource that only that type's
    nodes carry (clusters/*.yaml: ``teacher_node``, ``trainer_node``). Unset: wherever Ray finds
    room, which on an autoscaling cluster can be a GPU node type meant for other work."""

    teachers: str | None = Field(None, min_length=1, description="Teacher replicas.")
    train_workers: str | None = Field(None, min_length=1,
                                      description="The Ray Train workers of every trial.")
    evaluation: str | None = Field(None, min_length=1,
                                   description="Evaluation and judge engines of every trial.")

    @model_validator(mode="after")
    def _custom(self) -> NodeTypes:
        for role, name in self.model_dump().items():
            if name in (*cluster.BUILTIN, cluster.GPU_MEMORY):
                raise ValueError(f"{role} is {name!r}: name the custom resource of a node type "
                                 "(e.g. teacher_node), not a built-in resource")
        return self


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

    # A cloud GPU node takes minutes: the VM boots (1-3 min), then its setup commands install the
    # CUDA torch and vLLM wheels (several GB: 3-8 min on a fresh node), and only then does its
    # Ray join. 15 min covers that twice over; Ray Train's own 60 s failed the first trial of a
    # rehearsal whose trainer nodes took 90 s to boot (WorkerGroupStartupTimeoutError).
    node_start_timeout_s: float = Field(
        900.0, gt=0, description="How long a trial's Train worker group waits for nodes of its "
        "type that the autoscaler is still bringing (boot and setup), on every start and after "
        "a node is lost. Work no node type could ever hold is refused before any (capacity).")
    node_types: NodeTypes = NodeTypes()
    teachers_at_once: Literal["fit", "one"] = Field(
        "fit", description="fit: the teachers whose replicas the cluster (their node type, "
        "with what its autoscaler may add) holds together generate at once, the rest after; "
        "one: one teacher after another.")

    def placement(self, role: Literal["teachers", "evaluation"]) -> Placement:
        """Where the sweep's generation actors of `role` (teachers; evaluations and judges) run."""
        return Placement(cpus_per_engine=self.cpus_per_engine, torch_threads=self.torch_threads,
                         node_type=getattr(self.node_types, role),
                         start_timeout_s=self.node_start_timeout_s)


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
    mix: MixSpec = MixSpec()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    cost: CostConfig = CostConfig()  # the preview's assumptions: in no key
    analysis: AnalysisConfig = AnalysisConfig()  # how results are judged: in no key

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
        if self.search.proposes_while_running:
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
    def root(self) -> RunRoot:
        """The run root's folders (mixray.runroot), resolved."""
        return RunRoot(self.run_root_path)

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri or default_tracking_uri(self.run_root_path)

    def trials(self) -> list[Trial]:
        """Grid and random search: one `Trial` per trial, in a stable order. Optuna's trials are
        proposed while the sweep runs (mixray.sweep.tune)."""
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
        if self.search.proposes_while_running:
            return len(self.students) * self.search.num_samples
        return len(self.trials())

    def for_trial(self, student: str, params: dict[str, Any]) -> SweepConfig:
        """This sweep as one trial sees it: one student, the trial's values set. Raises
        pydantic's ValidationError when the values make an invalid sweep."""
        data = self.model_dump(exclude={"search"}) | {"students": [student]}
        for key, value in params.items():
            if key == SEED:  # a replicate: every seed a trial's bytes depend on
                for section in ("train.seed", "mix.seed", "evaluate.sampling.seed"):
                    set_dotted(data, section, value)
            elif key != LONG_SHARE:
                set_dotted(data, key, value)
        cfg = SweepConfig.model_validate(data)
        if LONG_SHARE in params:
            cfg = cfg.model_copy(update={"mix": cfg.mix.with_long_share(params[LONG_SHARE])})
        return cfg

    def resume_key(self) -> str:
        """What must not change for an interrupted sweep to be resumed: everything but the
        search grid (new points simply run), placement and what is kept on disk."""
        return spec_key(self.model_dump(exclude={
            "search": True, "resources": True, "run_root": True, "cost": True, "analysis": True,
            "train": DISK_ONLY,
            # a threshold decides whether work is kept, never what it holds: raising it after
            # a failed generation and resuming is the point
            "teachers": {"__all__": {"max_error_rate"}}, "evaluate": {"max_error_rate"}}))


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
