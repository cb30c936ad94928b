"""The report's PNG figures, drawn with matplotlib's Agg canvas (no pyplot, no global state).

`make_figures` draws those that have data into the report's folder: the Mix Distillation
curves (accuracy against the share of the first pool, the best mix starred), schedules
compared, per-benchmark accuracy, the data card (pool sizes, token lengths, realised shares)
and the per-step train loss. Inputs are the plain records of `mixray.science.analysis`.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mixray.science.analysis import GapRow, Point, SweepRecord, Trial

log = logging.getLogger(__name__)


def make_figures(rec: SweepRecord, points: Sequence[Point], gaps: Sequence[GapRow], out: Path
                 ) -> dict[str, str | None]:
    """Draw the figures that have data; a missing one maps to None."""
    has_cards = any(t.data_card for t in rec.trials)
    return {
        "curve": plot_curves(points, gaps, out / "curve.png") if points else None,
        "schedules": plot_schedules(points, out / "schedules.png")
        if any(p.schedule is not None for p in points) else None,
        "benchmarks": plot_benchmarks(rec.trials, out / "benchmarks.png")
        if any(t.usable and t.benchmarks for t in rec.trials) else None,
        "data_card": plot_data_card(rec.curate, rec.trials, out / "data_card.png")
        if rec.curate or has_cards else None,
        "train_loss": plot_train_loss(rec.trials, out / "train_loss.png")
        if any(t.status == "FINISHED" and t.loss_curve for t in rec.trials) else None,
        "length": plot_length(rec.trials, out / "length.png")
        if any(t.usable and _length(t) is not None for t in rec.trials) else None,
    }


def _length(t: Trial) -> tuple[float, str] | None:
    """A trial's evaluation length and what it is: reasoning tokens per sample where the
    student thinks, else response tokens; None when neither was logged."""
    for key, what in (("eval_reasoning_tokens_mean", "reasoning tokens per sample"),
                      ("eval_tokens_mean", "response tokens per sample")):
        if key in t.metrics:
            return t.metrics[key], what
    return None


def plot_length(trials: Sequence[Trial], path: Path) -> str:
    """Accuracy against how long each trial's student writes (the learnability gap is about
    length: measured, not assumed), one panel per student, each point its long share."""
    groups = _by_student(t for t in trials if t.usable and _length(t) is not None)
    fig, axes = _figure(len(groups))
    for ax, (student, members) in zip(axes, groups.items(), strict=True):
        lengths = [_length(t) for t in members]
        xs = [length for length, _ in lengths]
        ax.scatter(xs, [t.accuracy for t in members])
        for t, x in zip(members, xs, strict=True):
            ax.annotate(f"{t.share:g}", (x, t.accuracy), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set(title=_short(student, 40), xlabel=lengths[0][1], ylabel="accuracy")
    return _save(fig, path)


def _figure(n_panels: int, width: float = 4.5, height: float = 3.4) -> tuple[Any, list[Any]]:
    """An Agg-backed figure with a grid of panels (no pyplot, so no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, max(1, n_panels))
    rows = math.ceil(max(1, n_panels) / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=110)
    log.info("report: wrote %s", path)
    return path.name


def _by_student(items: Iterable[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        out[item.student].append(item)
    return dict(sorted(out.items()))


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_curves(points: Sequence[Point], gaps: Sequence[GapRow], path: Path) -> str:
    """Accuracy against the share of the first pool, one panel per student."""
    groups = _by_student(points)
    best = {(g.student, g.pools): g.best_mix for g in gaps if g.best_mix}
    fig, axes = _figure(len(groups))
    for ax, (student, pts) in zip(axes, groups.items(), strict=True):
        lines: dict[tuple[tuple[str, str], str | None], list[Point]] = defaultdict(list)
        for p in pts:
            lines[(p.pools, p.schedule)].append(p)
        for (pools, schedule), line in lines.items():
            label = f"{pools[0]} vs {pools[1]}" + (f" · {_short(schedule)}" if schedule else "")
            errs = ([math.nan if p.stderr is None else p.stderr for p in line]
                    if any(p.stderr for p in line) else None)
            ax.errorbar([p.share for p in line], [p.accuracy for p in line], yerr=errs,
                        marker="o", capsize=3, label=label)
        for (s, _), b in best.items():
            if s == student and b is not None:
                ax.plot([b.share], [b.accuracy], marker="*", markersize=14, color="gold",
                        markeredgecolor="black", linestyle="none", label="best mix")
        ax.set(title=_short(student, 40), xlabel="share of the first pool (long_share)",
               ylabel="eval accuracy", xlim=(-0.05, 1.05))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _grouped_bars(ax: Any, groups: Sequence[str],
                  series: dict[str, list[tuple[float, float | None]]]) -> None:
    """Bars at x = group, one colour per series; values are (height, stderr or None)."""
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        errs = ([math.nan if e is None else e for _, e in values]
                if any(e for _, e in values) else None)
        ax.bar(xs, [v for v, _ in values], width, yerr=errs, capsize=3, label=_short(label))
    ax.set_xticks(range(len(groups)), [_short(g, 16) for g in groups])
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)


def plot_schedules(points: Sequence[Point], path: Path) -> str:
    """Accuracy per schedule at each share, one panel per student."""
    groups = _by_student(p for p in points if p.schedule is not None)
    fig, axes = _figure(len(groups))
    for ax, (student, pts) in zip(axes, groups.items(), strict=True):
        shares = sorted({p.share for p in pts})
        series = {}
        for sched in sorted({p.schedule for p in pts}):
            at = {p.share: p for p in pts if p.schedule == sched}
            series[sched] = [(at[s].accuracy, at[s].stderr) if s in at else (math.nan, None)
                             for s in shares]
        _grouped_bars(ax, [f"{s:g}" for s in shares], series)
        ax.set(title=_short(student, 40), xlabel="long_share", ylabel="eval accuracy")
    return _save(fig, path)


def plot_benchmarks(trials: Sequence[Trial], path: Path) -> str:
    """Per-benchmark accuracy of each finished trial, one panel per student."""
    groups = _by_student(t for t in trials if t.usable and t.benchmarks)
    fig, axes = _figure(len(groups), width=5.5)
    for ax, (student, members) in zip(axes, groups.items(), strict=True):
        benches = sorted({b for t in members for b in t.benchmarks})
        series = {t.name: [t.benchmarks.get(b, (math.nan, None)) for b in benches]
                  for t in members}
        _grouped_bars(ax, benches, series)
        ax.set(title=_short(student, 40), ylabel="accuracy")
    return _save(fig, path)


def plot_data_card(curate: dict[str, dict[str, float]], trials: Sequence[Trial], path: Path) -> str:
    """Pool sizes, token lengths per teacher, and realised shares of the trials' mixes."""
    cards = [t for t in trials if t.data_card and t.share is not None]
    panels = (["sizes", "tokens"] if curate else []) + (["shares"] if cards else [])
    fig, axes = _figure(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        {"sizes": _panel_sizes, "tokens": _panel_tokens, "shares": _panel_shares}[panel](
            ax, curate, cards)
    return _save(fig, path)


def _panel_sizes(ax: Any, curate: dict[str, dict[str, float]], _: Sequence[Trial]) -> None:
    labels = sorted(curate)
    stats = [s for s in ("rows", "accepted") if any(s in curate[lb] for lb in labels)]
    _grouped_bars(ax, labels, {s: [(curate[lb].get(s, math.nan), None) for lb in labels]
                               for s in stats})
    ax.set(title="pools: generated and accepted rows", ylabel="rows")


def _panel_tokens(ax: Any, curate: dict[str, dict[str, float]], _: Sequence[Trial]) -> None:
    labels = sorted(curate)
    stats = [s for s in ("tokens_mean", "tokens_p50", "tokens_p90")
             if any(s in curate[lb] for lb in labels)]
    _grouped_bars(ax, labels, {s: [(curate[lb].get(s, math.nan), None) for lb in labels]
                               for s in stats})
    ax.set(title="pools: response tokens", ylabel="tokens")


def _panel_shares(ax: Any, _: dict[str, dict[str, float]], cards: Sequence[Trial]) -> None:
    for kind in ("sample_share", "token_share"):
        xs, ys = [], []
        for t in cards:
            pool = (t.data_card or {}).get("pools", {}).get(t.pools[0], {})
            if kind in pool:
                xs.append(t.share)
                ys.append(pool[kind])
        ax.plot(xs, ys, marker="o", linestyle="none", label=kind)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="requested")
    ax.set(title="mixes: realised share of the first pool", xlabel="requested long_share",
           ylabel="realised share")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_train_loss(trials: Sequence[Trial], path: Path) -> str:
    """Per-step train loss of each finished trial, one panel per student."""
    groups = _by_student(t for t in trials if t.status == "FINISHED" and t.loss_curve)
    fig, axes = _figure(len(groups))
    for ax, (student, members) in zip(axes, groups.items(), strict=True):
        for t in members:
            ax.plot([s for s, _ in t.loss_curve], [v for _, v in t.loss_curve], label=t.name)
        ax.set(title=_short(student, 40), xlabel="step", ylabel="train loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
