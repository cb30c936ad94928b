"""Schedules as data: a MixSpec's schedule compiled into segments of training with linear weights.

Training is the manifest read in order, measured in the mix's unit (samples or tokens) as a fraction
in [0, 1]. Every schedule becomes a list of `Segment`s that tile [0, 1]: `constant` and
`length_order` are one segment, `phases` one per phase, `ramp` one per slice with the weights
interpolated along the line from start to end. Within a segment a pool's weight moves linearly from
`w0` to `w1`, so one sampler serves every schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixray.mix.config import MixSpec, MixWeights, PhasesSchedule, RampSchedule


@dataclass(frozen=True)
class Segment:
    """Training fractions [start, end), labelled `phase`, with weights moving from w0 to w1."""

    phase: int
    start: float
    end: float
    w0: dict[str, float]  # normalised over every pool of the spec
    w1: dict[str, float]

    @property
    def fraction(self) -> float:
        return self.end - self.start

    def active(self, pool: str) -> bool:
        return self.w0[pool] > 0 or self.w1[pool] > 0

    def mean_weight(self, pool: str) -> float:
        """The pool's requested share of this segment (the weight averaged over it)."""
        return (self.w0[pool] + self.w1[pool]) / 2

    def cumulative_share(self, pool: str, tau: float) -> float:
        """Share of the segment's budget the pool should have supplied once `tau` of it is spent:
        the integral of the linear weight from 0 to tau."""
        a, b = self.w0[pool], self.w1[pool]
        return a * tau + (b - a) * tau * tau / 2


def normalise(weights: MixWeights, pools: list[str]) -> dict[str, float]:
    """Weights over `pools` summing to 1 (absent pools weigh 0)."""
    total = sum(weights.values())
    assert total > 0, "MixSpec validation refuses all-zero weights"
    return {p: weights.get(p, 0.0) / total for p in pools}


def segments(spec: MixSpec) -> list[Segment]:
    """The spec's schedule as segments tiling [0, 1] in training order."""
    pools = list(spec.pools)
    base = normalise(spec.pools, pools)
    schedule = spec.schedule
    if isinstance(schedule, PhasesSchedule):
        return _phases(schedule, base, pools)
    if isinstance(schedule, RampSchedule):
        start = normalise(schedule.start, pools) if schedule.start is not None else base
        end = normalise(schedule.end, pools) if schedule.end is not None else base
        return _ramp(start, end, schedule.segments)
    return [Segment(0, 0.0, 1.0, base, base)]


def _phases(schedule: PhasesSchedule, base: dict[str, float], pools: list[str]) -> list[Segment]:
    out, start = [], 0.0
    for i, phase in enumerate(schedule.phases):
        w = normalise(phase.weights, pools) if phase.weights is not None else base
        # the last phase ends at exactly 1 so float error in the fractions never leaves a gap
        end = 1.0 if i == len(schedule.phases) - 1 else start + phase.fraction
        out.append(Segment(i, start, end, w, w))
        start = end
    return out


def _ramp(start: dict[str, float], end: dict[str, float], k: int) -> list[Segment]:
    def at(t: float) -> dict[str, float]:
        return {p: start[p] + (end[p] - start[p]) * t for p in start}

    return [Segment(i, i / k, (i + 1) / k, at(i / k), at((i + 1) / k)) for i in range(k)]


def demand(segs: list[Segment]) -> dict[str, float]:
    """Each pool's share of the whole mixture over all segments (sums to 1)."""
    pools = segs[0].w0
    return {p: sum(s.fraction * s.mean_weight(p) for s in segs) for p in pools}
