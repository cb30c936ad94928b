"""How the cost preview reads: token counts, durations and the plan's cost lines
(`format_estimate` of a `mixray.cost.estimate.CostEstimate`); `mixray.cost.actual` writes estimate
against actual with the same words.
"""

from __future__ import annotations

from typing import Any

from mixray.cost.estimate import CostEstimate


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "time unknown"
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def about(seconds: float | None) -> str:
    return "time unknown" if seconds is None else f"~{duration(seconds)}"


def span(values: list[float], fmt: Any = human) -> str:
    """One value, or the range of several, as `fmt` writes them."""
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def gpu_hours_text(hours: float, suffix: str = "") -> str:
    return f", {hours:.3g} GPU-h{suffix}" if hours else ""


def format_estimate(est: CostEstimate) -> list[str]:
    """The plan's cost lines: per teacher, per trial (a range over trials), the total."""
    head = ("cost     : estimated at mixray/cost/config.py's rates (the cost: section overrides "
            "or calibrates them)")
    lines = [head]
    for label, c in est.generate.items():
        lines.append(f"  generate {label}: {human(c.tokens)} tokens = {human(c.count)} "
                     f"{c.unit} x {c.each:.0f}; {about(c.seconds)}{gpu_hours_text(c.gpu_hours)}")
    for stage, costs, what in (("train", est.train, "trial"), ("evaluate", est.evaluate, "trial"),
                               ("baseline", est.baselines, "student")):
        if not (cs := list(costs.values())):
            continue
        n, secs = sum(c.times for c in cs), [c.seconds for c in cs]
        time = ("time unknown" if None in secs else
                f"~{span([s for s in secs if s is not None], duration)}")
        lines.append(f"  {stage} ({n} {what}{'s' * (n != 1)}): {span([c.tokens for c in cs])} "
                     f"tokens each = {span([c.count for c in cs])} {cs[0].unit} x "
                     f"{span([c.each for c in cs])}; {time} each"
                     f"{gpu_hours_text(sum(c.gpu_hours * c.times for c in cs), ' in all')}")
    tokens = sum(c.tokens * c.times for c in est.stages())
    known = [c.seconds * c.times for c in est.stages() if c.seconds is not None]
    lines.append(f"  total: {human(tokens)} tokens, ~{duration(sum(known))} one stage after "
                 f"another{' (some unknown)' if len(known) < len(est.stages()) else ''}, "
                 f"{sum(c.gpu_hours * c.times for c in est.stages()):.3g} GPU-hours")
    return lines + [f"  note: {n}" for n in est.notes]
