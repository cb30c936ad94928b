"""The `mix` section: which curated pools a student trains on, in what shares, in what order.

`mix.manifest.build_manifest` turns a `MixSpec` and the pools into the training manifest;
`MixSpec.with_long_share` is what a search over ``mix.long_share`` sets per trial.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mixray.artifacts import spec_key
from mixray.schema import Strict, count_or_all

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
    model_config = ConfigDict(strict=True)  # merged with Strict's


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
        return count_or_all(budget, "budget ")

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

    def schedule_label(self) -> str:
        """How the report groups trials by schedule: the kind, plus a short hash of its settings
        (two ramps with other ends are two schedules)."""
        s = self.schedule
        return s.kind if s.kind == "constant" else f"{s.kind}-{spec_key(s.model_dump())[:6]}"

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
