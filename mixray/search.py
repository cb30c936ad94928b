"""What a sweep searches: the `search` section of a sweep file, and the trials it expands to.

Any key under `mix.`, `train.` or `evaluate.` can vary per trial, or a whole section (`mix: {grid:
[{pools: ...}, {pools: ..., long_pool: large, short_pool: small}]}`: each value replaces the
section, its defaults filling the rest), so keys that only make sense together vary together.
Teachers, problems and curation are shared by every trial: generated once, before the trials.
An axis is one of

    {grid: [...]}           every value, exhaustively (Tune's grid_search)
    {choice: [...]}         one value per draw
    {uniform: [lo, hi]}     a float per draw
    {loguniform: [lo, hi]}  a float per draw, uniform in log space

`algorithm: grid` takes only grid axes; `random` crosses the grid axes with `num_samples` draws of
the others (drawn once from `seed`, shared by every student so students compare on equal points);
`optuna` asks Optuna's TPE for `num_samples` points per student. `mix.long_share` is the long
pool's share of the base mix (`MixSpec.with_long_share`), and `search.long_share: [...]` is short
for `space: {mix.long_share: {grid: [...]}}`.

A trial is a `Trial` record (name, student, values); `SweepConfig.trials()` lists them for grid
and random search, `mixray.sweep.tune` makes Optuna's.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mixray.schema import Strict

SEARCHABLE = ("mix.", "train.", "evaluate.")
LONG_SHARE = "mix.long_share"
# A trial's replicate: `search.seeds` repeats every point once per seed, which sets train.seed,
# mix.seed and evaluate.sampling.seed together (SweepConfig.for_trial). Not a search axis: the
# report averages over it (analysis.Point) instead of comparing across it.
SEED = "seed"
# Placement, not science: a trial's resources are fixed so that concurrency can be derived;
# what stays on disk (train.keep_checkpoints) is the sweep's, not a trial's, choice.
NOT_SEARCHABLE = ("train.num_workers", "train.keep_checkpoints")


class Domain(Strict):
    """One search axis: exactly one of `grid`, `choice`, `uniform`, `loguniform`."""

    grid: list[Any] | None = Field(None, min_length=1, description="Every value, exhaustively.")
    choice: list[Any] | None = Field(None, min_length=1, description="One value per draw.")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], a float per draw.")
    loguniform: tuple[float, float] | None = Field(
        None, description="[low, high] with 0 < low, uniform in log space.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Domain:
        given = [k for k in ("grid", "choice", "uniform", "loguniform")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("an axis is exactly one of {grid: [...]}, {choice: [...]}, "
                             f"{{uniform: [low, high]}}, {{loguniform: [low, high]}}; "
                             f"got {given or 'none'}")
        bounds = self.uniform or self.loguniform
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"low must be below high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs 0 < low, got {list(self.loguniform)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform")
                    if getattr(self, k) is not None)

    def sample(self, rng: random.Random) -> Any:
        assert self.kind != "grid", "grid axes are enumerated, not drawn"
        if self.choice is not None:
            return self.choice[rng.randrange(len(self.choice))]
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        lo, hi = self.loguniform  # type: ignore[misc]
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    def corners(self) -> list[Any]:
        """Values that together exercise the axis's validation: every listed value, both bounds."""
        return list(self.grid or self.choice or self.uniform or self.loguniform or [])


class FifoScheduler(Strict):
    """Every trial runs to the end."""

    kind: Literal["fifo"] = "fifo"


class AshaScheduler(Strict):
    """Asynchronous successive halving: at each rung (a training step: grace_period x
    reduction_factor^k) a trial whose intermediate `metric` is in the worse part of those seen at
    that rung stops early. Ray Train forwards the loop's metrics to Tune as training goes."""

    kind: Literal["asha"]
    metric: str = Field("train_loss", description="An intermediate metric reported while training.")
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(
        1, ge=1, description="Steps every trial gets before it can be stopped.")
    reduction_factor: float = Field(
        2.0, gt=1.0, description="1/reduction_factor of trials go on at each rung.")

    def rung_steps(self, up_to: int = 10**7) -> list[int]:
        """The training steps at which ASHA judges a trial: the first whole step at or past each
        rung. Train reports metrics sparsely (train/launch.py), so it must report at these."""
        steps, milestone = [], float(self.grace_period)
        while milestone <= up_to:
            steps.append(math.ceil(milestone))
            milestone *= self.reduction_factor
        return sorted(set(steps))


class SearchConfig(Strict):
    """The trials of a sweep: students x the search space."""

    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid: grid axes only; random: grid axes x num_samples draws of the "
        "others; optuna: TPE proposes num_samples points per student.")
    long_share: list[float] | None = Field(
        None, min_length=1, description="Short for space: {mix.long_share: {grid: [...]}}.")
    space: dict[str, Domain] = Field(
        default_factory=dict, description="Dotted key under mix., train. or evaluate. -> axis.")
    num_samples: int = Field(
        1, ge=1, description="Draws (random) or proposals per student (optuna).")
    seed: int = Field(0, description="Seeds random draws and Optuna's sampler.")
    seeds: list[int] | None = Field(
        None, min_length=1, description="Repeat every search point once per seed (grid and "
        "random search): each sets train.seed, mix.seed and evaluate.sampling.seed; the summary "
        "and report give the mean over seeds with its standard error. None: one run per point, "
        "with the sections' own seeds.")
    metric: str = Field("eval_accuracy", description="What Optuna optimises and 'best' means.")
    mode: Literal["min", "max"] = "max"
    scheduler: FifoScheduler | AshaScheduler = Field(
        default_factory=FifoScheduler, discriminator="kind")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Upper bound; the real limit also follows from the resources.")

    @field_validator("space")
    @classmethod
    def _searchable_keys(cls, space: dict[str, Domain]) -> dict[str, Domain]:
        for key, domain in space.items():
            section = key.split(".", 1)[0] + "."
            if section not in SEARCHABLE or key in NOT_SEARCHABLE:
                raise ValueError(
                    f"search.space.{key}: only keys under {', '.join(SEARCHABLE)} can vary "
                    "per trial (teachers, problems and curate are generated once for all trials; "
                    f"placement such as {', '.join(NOT_SEARCHABLE)} is fixed)")
            if key == LONG_SHARE and not all(0.0 <= v <= 1.0 for v in _numbers(domain, key)):
                raise ValueError(f"search.space.{key}: every long share must lie in [0, 1]")
        return space

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.long_share is not None and LONG_SHARE in self.space:
            raise ValueError(f"give search.long_share or search.space.{LONG_SHARE}, not both")
        if self.long_share is not None and not all(0.0 <= s <= 1.0 for s in self.long_share):
            raise ValueError(f"every search.long_share must lie in [0, 1], got {self.long_share}")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"search.seeds must be distinct, got {self.seeds}")
        if self.seeds is not None and self.algorithm == "optuna":
            raise ValueError("search.seeds repeats the points of grid and random search; Optuna "
                             "proposes one trial per point (use algorithm random, or no seeds)")
        kinds = {key: d.kind for key, d in self.axes().items()}
        if self.algorithm == "grid":
            drawn = [k for k, kind in kinds.items() if kind != "grid"]
            if drawn:
                raise ValueError(f"search.algorithm grid takes only {{grid: [...]}} axes, but "
                                 f"{drawn} are drawn; use algorithm random or optuna")
            if self.num_samples != 1:
                raise ValueError("search.num_samples must be 1 with algorithm grid (a repeated "
                                 "grid point is the same trial); use algorithm random to draw")
        elif self.algorithm == "random" and not any(kind != "grid" for kind in kinds.values()):
            raise ValueError("search.algorithm random needs at least one drawn axis (choice, "
                             "uniform, loguniform); with only grid axes use algorithm grid")
        elif self.algorithm == "optuna":
            grids = [k for k, kind in kinds.items() if kind == "grid"]
            if grids or not kinds:
                raise ValueError("search.algorithm optuna proposes every value itself: give each "
                                 "axis as choice, uniform or loguniform"
                                 + (f" (grid axes: {grids})" if grids else " (the space is empty)"))
        return self

    @property
    def proposes_while_running(self) -> bool:
        """Whether the trials are proposed while the sweep runs (Optuna, told each result), not
        listed before it starts (grid, random: `points`). Every place that treats the two
        apart asks this."""
        return self.algorithm == "optuna"

    def axes(self) -> dict[str, Domain]:
        """Every axis, `search.long_share` included, in file order (long share first)."""
        extra = {LONG_SHARE: Domain(grid=self.long_share)} if self.long_share is not None else {}
        return extra | dict(self.space)

    def points(self) -> list[dict[str, Any]]:
        """The search points of grid and random search (each student runs every one)."""
        assert not self.proposes_while_running, "these points are proposed while the sweep runs"
        axes = self.axes()
        grid = [{}]
        for key, d in axes.items():
            if d.kind == "grid":
                grid = [p | {key: v} for p in grid for v in d.grid]  # type: ignore[union-attr]
        rng = random.Random(self.seed)
        drawn = [{key: d.sample(rng) for key, d in axes.items() if d.kind != "grid"}
                 for _ in range(self.num_samples)]
        order = list(axes)
        points = [{k: (g | s)[k] for k in order} for g in grid for s in drawn]
        if self.seeds is None:
            return points
        return [p | {SEED: seed} for p in points for seed in self.seeds]


def _numbers(domain: Domain, key: str) -> list[float]:
    values = domain.corners()
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"search.space.{key}: expected numbers, got {values}")
    return [float(v) for v in values]


def value_token(key: str, value: Any) -> str:
    """A short, readable, file-name-safe token for one axis value of a trial name."""
    if key == LONG_SHARE:
        return f"long{value:g}"
    short = key.rsplit(".", 1)[-1]
    if isinstance(value, float):
        text = f"{value:.3g}"
    elif isinstance(value, dict) and isinstance(value.get("pools"), dict):  # a whole mix
        text = "+".join(f"{pool}{w:g}" for pool, w in value["pools"].items() if w)
    elif isinstance(value, (dict, list)):
        digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]
        kind = value.get("kind") if isinstance(value, dict) else None
        text = kind if kind and len(value) == 1 else f"{kind}-{digest}" if kind else digest
    else:
        text = str(value)
    return f"{short}={text}".replace("/", "_").replace(" ", "")


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: a student trained on one point of the search space."""

    name: str  # stable (trial_name): its MLflow child run, output folder, identity on resume
    student: str  # a model spec from `students`
    params: dict[str, Any]  # dotted search key -> this trial's value


def point_label(params: dict[str, Any]) -> str:
    """A trial's search values less its long share and seed: what makes trials at one share
    different points (repeats over seeds share it)."""
    return " ".join(value_token(k, v) for k, v in params.items() if k not in (LONG_SHARE, SEED))


def trial_name(student: str, params: dict[str, Any], suffix: str | None = None) -> str:
    """A trial's stable name: its MLflow child run, its output folder, its identity on resume."""
    parts = [Path(student).name] + [value_token(k, v) for k, v in params.items()]
    return "-".join(parts + ([suffix] if suffix else []))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """data['a']['b'] = value for key 'a.b', creating the mappings on the way."""
    *path, last = key.split(".")
    node = data
    for part in path:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value
