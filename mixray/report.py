"""The comparison report of one sweep invocation, read back from MLflow.

``python -m mixray.report --experiment NAME [--tracking-uri URI] [--parent RUN_ID] [--out DIR]``
writes ``index.html`` (self-contained apart from the PNG figures next to it) and ``summary.json``:

(a) the learnability gaps per student (PAPER.md): ΔLong = P(long only) − P(short only) and, when
    the sweep mixes teachers labelled ``large``/``small``, ΔLarge; the best mix and its accuracy
    against the best single source;
(b) accuracy against the share of the first pool (the Mix Distillation curve), with error bars
    when ``eval_accuracy_stderr`` is logged;
(c) schedules compared, when trials carry a ``schedule`` param;
(d) per-benchmark accuracy, when ``eval.<benchmark>.accuracy`` metrics exist;
(e) the data card: pool sizes and token lengths (parent ``curate.*`` metrics, trial data cards);
(f) every trial with its status. Trials that did not finish are listed but left out of (a)-(d).

The MLflow layout it reads is the one ``mixray.tracking`` writes: a parent run per invocation
(tag ``mixray.kind=sweep``) and a child run per trial (tag ``mlflow.parentRunId``).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mixray import logs
from mixray.evaluate.scoring import mean_and_stderr

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
DEFAULT_POOLS = ("long", "short")
GAP_NAMES = {("long", "short"): "ΔLong", ("large", "small"): "ΔLarge"}
BENCH_RE = re.compile(r"^eval\.(.+)\.accuracy$")
CURATE_PREFIX = "curate."


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Trial:
    """One child run. ``share`` is the share of ``pools[0]`` in the mix (param ``long_share``)."""

    run_id: str
    name: str
    status: str
    student: str
    share: float | None
    pools: tuple[str, str]
    schedule: str | None
    accuracy: float | None
    stderr: float | None
    train_loss: float | None
    loss_curve: tuple[tuple[int, float], ...]
    benchmarks: dict[str, tuple[float, float | None]]
    data_card: dict[str, Any] | None
    error: str | None

    @property
    def usable(self) -> bool:
        """Whether the trial enters the curves and gap tables."""
        return self.status == "FINISHED" and self.accuracy is not None and self.share is not None


@dataclass(frozen=True)
class SweepRecord:
    """The parent run of one invocation and its trials."""

    experiment: str
    tracking_uri: str
    parent_id: str
    parent_name: str
    parent_status: str
    started: str
    teachers: tuple[str, ...]
    curate: dict[str, dict[str, float]]
    trials: list[Trial]


@dataclass(frozen=True)
class Point:
    """Finished trials with the same student, pools, schedule and share, averaged."""

    student: str
    pools: tuple[str, str]
    schedule: str | None
    share: float
    accuracy: float
    stderr: float | None
    n: int
    trials: tuple[str, ...]


@dataclass(frozen=True)
class GapRow:
    """One student's gap over one pair of pools, and its best mix against the single sources."""

    student: str
    pools: tuple[str, str]
    gap_name: str
    p_first: float | None
    p_second: float | None
    gap: float | None
    best_mix: Point | None
    best_single: float | None
    mix_gain: float | None


# --------------------------------------------------------------------------- reading MLflow


def open_client(tracking_uri: str) -> MlflowClient:
    """A client; refuses a sqlite URI whose file is missing (MLflow would create an empty one)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ValueError(f"no MLflow store at {path} (tracking URI {tracking_uri}); "
                             "run a sweep first or pass --tracking-uri")
    return MlflowClient(tracking_uri=tracking_uri)


def find_experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"experiment {name!r} not found; experiments in this store: {names}")
    return exp.experiment_id


def _search_all(client: MlflowClient, exp_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_parent(client: MlflowClient, exp_id: str, experiment: str, parent_id: str | None) -> Run:
    """The given parent run, or the latest one of the experiment."""
    parents = _search_all(client, exp_id, "tags.`mixray.kind` = 'sweep'")
    if not parents:
        raise ValueError(f"experiment {experiment!r} has no sweep (parent) runs")
    if parent_id is None:
        return parents[0]
    for run in parents:
        if run.info.run_id == parent_id:
            return run
    known = [f"{r.info.run_id} ({r.info.run_name}, {_when(r.info.start_time)})" for r in parents]
    raise ValueError(f"parent run {parent_id!r} not found in experiment {experiment!r}; "
                     f"parent runs: {known}")


def _when(ms: int | None) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _teachers(params: dict[str, str], prefix: str) -> set[str]:
    pattern = re.compile(rf"^{re.escape(prefix)}teachers\.(.+)\.model$")
    return {m.group(1) for key in params if (m := pattern.match(key))}


def _curate(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        if key.startswith(CURATE_PREFIX):
            label, _, stat = key.removeprefix(CURATE_PREFIX).rpartition(".")
            out[label][stat] = value
    return dict(out)


def _benchmarks(metrics: dict[str, float]) -> dict[str, tuple[float, float | None]]:
    out = {}
    for key, value in metrics.items():
        if m := BENCH_RE.match(key):
            out[m.group(1)] = (value, metrics.get(f"{key}_stderr"))
    return dict(sorted(out.items()))


def _accuracy(metrics: dict[str, float], benchmarks: dict[str, tuple[float, float | None]]
              ) -> float | None:
    """``eval_accuracy``, else the paper's P: the unweighted mean over benchmarks."""
    if "eval_accuracy" in metrics:
        return metrics["eval_accuracy"]
    if benchmarks:
        return math.fsum(acc for acc, _ in benchmarks.values()) / len(benchmarks)
    return None


def _loss(client: MlflowClient, run: Run) -> tuple[float | None, tuple[tuple[int, float], ...]]:
    """The final train loss (logged at step 0) and the per-step curve (steps >= 1)."""
    if "train_loss" not in run.data.metrics:
        return None, ()
    history = client.get_metric_history(run.info.run_id, "train_loss")
    curve = tuple(sorted((m.step, m.value) for m in history if m.step >= 1))
    final = [m.value for m in history if m.step == 0]
    return (final[-1] if final else run.data.metrics["train_loss"]), curve


def _data_card(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    try:
        if not any(a.path == "data_card.json" for a in client.list_artifacts(run_id)):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(client.download_artifacts(run_id, "data_card.json", tmp))
                              .read_text())
    except (MlflowException, OSError, ValueError) as e:
        log.warning("could not read the data card of run %s: %s", run_id, e)
        return None


def _error_line(tags: dict[str, str]) -> str | None:
    lines = [ln.strip() for ln in tags.get("mixray.error", "").splitlines() if ln.strip()]
    return lines[-1] if lines else None


def load_trial(client: MlflowClient, run: Run, default_pools: tuple[str, str]) -> Trial:
    params, metrics = run.data.params, run.data.metrics
    benchmarks = _benchmarks(metrics)
    train_loss, curve = _loss(client, run)
    pools = (params.get("mix.long_pool", default_pools[0]),
             params.get("mix.short_pool", default_pools[1]))
    return Trial(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id,
        status=run.info.status, student=params.get("student", "?"),
        share=_float(params.get("long_share")), pools=pools, schedule=params.get("schedule"),
        accuracy=_accuracy(metrics, benchmarks), stderr=metrics.get("eval_accuracy_stderr"),
        train_loss=train_loss, loss_curve=curve, benchmarks=benchmarks,
        data_card=_data_card(client, run.info.run_id), error=_error_line(run.data.tags),
    )


def load_sweep_record(experiment: str, tracking_uri: str = DEFAULT_TRACKING_URI,
                      parent_id: str | None = None) -> SweepRecord:
    """Read the parent run (given, or the latest) of ``experiment`` and all its trials."""
    client = open_client(tracking_uri)
    exp_id = find_experiment_id(client, experiment)
    parent = find_parent(client, exp_id, experiment, parent_id)
    pid, params = parent.info.run_id, parent.data.params
    pools = (params.get("sweep.mix.long_pool", DEFAULT_POOLS[0]),
             params.get("sweep.mix.short_pool", DEFAULT_POOLS[1]))
    runs = _search_all(client, exp_id, f"tags.`{PARENT_TAG}` = '{pid}'")
    trials = sorted((load_trial(client, r, pools) for r in runs),
                    key=lambda t: (t.student, t.pools, t.share if t.share is not None else -1,
                                   t.schedule or "", t.name))
    teachers = _teachers(params, "sweep.").union(*(_teachers(r.data.params, "") for r in runs))
    log.info("report: experiment %r, parent %s, %d trials", experiment, pid, len(trials))
    return SweepRecord(
        experiment=experiment, tracking_uri=tracking_uri, parent_id=pid,
        parent_name=parent.info.run_name or pid, parent_status=parent.info.status,
        started=_when(parent.info.start_time), teachers=tuple(sorted(teachers)),
        curate=_curate(parent.data.metrics), trials=trials,
    )


# --------------------------------------------------------------------------- analysis


def _mean_and_stderr(members: Sequence[Trial]) -> tuple[float, float | None]:
    """One trial: its logged stderr. Repeats: the standard error of their mean."""
    scored = [t for t in members if t.accuracy is not None]
    if len(scored) == 1:
        return scored[0].accuracy, scored[0].stderr
    return mean_and_stderr([t.accuracy for t in scored])


def curve_points(trials: Iterable[Trial]) -> list[Point]:
    """Finished trials grouped into the points of the Mix Distillation curves."""
    groups: dict[tuple[str, tuple[str, str], str | None, float], list[Trial]] = defaultdict(list)
    for t in trials:
        if t.usable:
            groups[(t.student, t.pools, t.schedule, t.share)].append(t)
    points = []
    for (student, pools, schedule, share), members in groups.items():
        acc, se = _mean_and_stderr(members)
        points.append(Point(student, pools, schedule, share, acc, se, len(members),
                            tuple(t.name for t in members)))
    return sorted(points, key=lambda p: (p.student, p.pools, p.schedule or "", p.share))


def _endpoint(points: Sequence[Point], share: float) -> float | None:
    """Accuracy of a single-source mix (share 0 or 1), pooled over schedules."""
    at = [p for p in points if p.share == share]
    if not at:
        return None
    return math.fsum(p.accuracy * p.n for p in at) / sum(p.n for p in at)


def gap_name(pools: tuple[str, str]) -> str:
    return GAP_NAMES.get(pools, f"Δ({pools[0]}−{pools[1]})")


def gap_rows(points: Sequence[Point]) -> list[GapRow]:
    """Per student and pair of pools: P(first only), P(second only), the gap, the best mix."""
    by: dict[tuple[str, tuple[str, str]], list[Point]] = defaultdict(list)
    for p in points:
        by[(p.student, p.pools)].append(p)
    rows = []
    for (student, pools), pts in sorted(by.items()):
        first, second = _endpoint(pts, 1.0), _endpoint(pts, 0.0)
        mixes = [p for p in pts if 0.0 < p.share < 1.0]
        best = max(mixes, key=lambda p: p.accuracy) if mixes else None
        singles = [v for v in (first, second) if v is not None]
        best_single = max(singles) if singles else None
        gain = best.accuracy - best_single if best and best_single is not None else None
        gap = first - second if first is not None and second is not None else None
        rows.append(GapRow(student, pools, gap_name(pools), first, second, gap, best,
                           best_single, gain))
    return rows


# --------------------------------------------------------------------------- figures


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


# --------------------------------------------------------------------------- HTML


def fmt(value: float | None, signed: bool = False) -> str:
    """Numbers as page text: 'n/a' if missing, counts as integers, else 4 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e15 and not signed:
        return str(int(value))
    if abs(value) >= 1000:
        return f"{value:+.0f}" if signed else f"{value:.0f}"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _acc(value: float | None, stderr: float | None) -> str:
    return fmt(value) + (f" ± {fmt(stderr)}" if stderr is not None and value is not None else "")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str = "",
           row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{html.escape(row_classes[i])}"' if row_classes else ""
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _gap_table(rows: Sequence[GapRow], pools: tuple[str, str], table_id: str) -> str:
    a, b = pools
    headers = ["Student", f"P({a} only)", f"P({b} only)", gap_name(pools),
               f"Best mix ({a} share)", "Best mix accuracy", "Best single source",
               "Best mix − best single"]
    body = [[r.student, fmt(r.p_first), fmt(r.p_second), fmt(r.gap, signed=True),
             _mix_label(r.best_mix), fmt(r.best_mix.accuracy if r.best_mix else None),
             _single_label(r), fmt(r.mix_gain, signed=True)] for r in rows]
    return _table(headers, body, table_id)


def _mix_label(p: Point | None) -> str:
    if p is None:
        return "n/a (no mixed trial)"
    return f"{p.share:g}" + (f" ({p.schedule})" if p.schedule else "")


def _single_label(r: GapRow) -> str:
    if r.best_single is None:
        return "n/a"
    which = r.pools[0] if r.p_first == r.best_single else r.pools[1]
    return f"{fmt(r.best_single)} ({which} only)"


def _gap_section(rows: Sequence[GapRow], pools: tuple[str, str], teachers: Sequence[str]) -> str:
    name = gap_name(pools)
    mine = [r for r in rows if r.pools == pools]
    title = f"<h3>{html.escape(name)} = P({pools[0]}) − P({pools[1]})</h3>"
    if mine:
        return title + _gap_table(mine, pools, f"gap-{pools[0]}-{pools[1]}")
    if not set(pools) <= set(teachers):
        why = f"no teachers labelled {pools[0]!r} and {pools[1]!r} in this sweep"
    else:
        why = f"teachers {pools[0]!r} and {pools[1]!r} exist but no finished trial mixes them"
    return title + _note(f"{name}: n/a ({why}).")


def section_gaps(rec: SweepRecord, gaps: Sequence[GapRow]) -> str:
    pairs = list(GAP_NAMES) + sorted({g.pools for g in gaps} - set(GAP_NAMES))
    parts = [_gap_section(gaps, pair, rec.teachers) for pair in pairs]
    intro = _note("P is the student's eval accuracy after training on one source only (share 1: "
                  "first pool only, share 0: second pool only); the best mix is the mixed share "
                  "(0 < share < 1) with the highest accuracy. Only finished trials count.")
    return '<section id="gaps"><h2>(a) Learnability gaps</h2>' + intro + "".join(parts) + \
        "</section>"


def section_curve(points: Sequence[Point], figure: str | None) -> str:
    body = [[p.student, f"{p.pools[0]} vs {p.pools[1]}", p.schedule or "", f"{p.share:g}",
             _acc(p.accuracy, p.stderr), p.n, ", ".join(p.trials)] for p in points]
    content = (_img(figure, "accuracy against long share") if figure else "") + _table(
        ["Student", "Pools", "Schedule", "Share", "Accuracy", "Trials (n)", "Trial names"],
        body, "curve-points") if points else _note("No finished trial with an eval accuracy.")
    return f'<section id="curve"><h2>(b) Accuracy against mix share</h2>{content}</section>'


def section_schedules(points: Sequence[Point], figure: str | None) -> str:
    scheduled = [p for p in points if p.schedule is not None]
    if not scheduled:
        content = _note("No trial has a `schedule` param: schedules are not compared.")
    else:
        body = [[p.student, f"{p.share:g}", p.schedule, _acc(p.accuracy, p.stderr), p.n]
                for p in scheduled]
        content = (_img(figure, "schedules compared") if figure else "") + _table(
            ["Student", "Share", "Schedule", "Accuracy", "Trials (n)"], body, "schedules-table")
    return f'<section id="schedules"><h2>(c) Schedules compared</h2>{content}</section>'


def section_benchmarks(trials: Sequence[Trial], figure: str | None) -> str:
    with_b = [t for t in trials if t.usable and t.benchmarks]
    if not with_b:
        content = _note("No per-benchmark metrics (eval.<benchmark>.accuracy) were logged.")
    else:
        benches = sorted({b for t in with_b for b in t.benchmarks})
        body = [[t.name, t.student, f"{t.share:g}"] + [
            _acc(*t.benchmarks[b]) if b in t.benchmarks else "n/a" for b in benches]
            for t in with_b]
        content = (_img(figure, "per-benchmark accuracy") if figure else "") + _table(
            ["Trial", "Student", "Share"] + benches, body, "benchmarks-table")
    return f'<section id="benchmarks"><h2>(d) Per-benchmark accuracy</h2>{content}</section>'


def _curate_table(curate: dict[str, dict[str, float]]) -> str:
    stats = sorted({s for v in curate.values() for s in v})
    body = [[label] + [fmt(curate[label].get(s)) for s in stats] for label in sorted(curate)]
    return "<h3>Pools (curation)</h3>" + _table(["Teacher"] + stats, body, "curate-table")


def _card_table(trials: Sequence[Trial]) -> str:
    cards = [t for t in trials if t.data_card]
    if not cards:
        return _note("No trial data cards (data_card.json) were found.")
    body = []
    for t in cards:
        card = t.data_card or {}
        for label, pool in sorted(card.get("pools", {}).items()):
            body.append([t.name, fmt(card.get("requested_long_share")), fmt(card.get("rows")),
                         fmt(card.get("tokens")), label, fmt(pool.get("samples")),
                         fmt(pool.get("tokens")), fmt(pool.get("sample_share")),
                         fmt(pool.get("token_share")), str(card.get("content_hash", ""))[:12]])
    headers = ["Trial", "Requested share", "Rows", "Tokens", "Pool", "Pool samples",
               "Pool tokens", "Sample share", "Token share", "Content hash"]
    return "<h3>Mixes (trial data cards)</h3>" + _table(headers, body, "data-cards")


def section_data_card(rec: SweepRecord, figure: str | None) -> str:
    curate = _curate_table(rec.curate) if rec.curate else _note(
        "The parent run has no curate.* metrics.")
    img = _img(figure, "data card") if figure else ""
    return '<section id="data-card"><h2>(e) Data card</h2>' + curate + img + \
        _card_table(rec.trials) + "</section>"


def section_trials(rec: SweepRecord, figure: str | None) -> str:
    schedules = any(t.schedule is not None for t in rec.trials)
    headers = ["Trial", "Student", "Long share"] + (["Schedule"] if schedules else []) + [
        "Train loss", "Eval accuracy", "Status", "Run id", "Error"]
    body = [[t.name, t.student, fmt(t.share)] + ([t.schedule or ""] if schedules else []) + [
        fmt(t.train_loss), _acc(t.accuracy, t.stderr), t.status, t.run_id, t.error or ""]
        for t in rec.trials]
    classes = [f"status-{t.status}" for t in rec.trials]
    excluded = [t.name for t in rec.trials if not t.usable]
    note = _note(f"Left out of the curves and gap tables (not finished, or no accuracy): "
                 f"{', '.join(excluded)}.") if excluded else ""
    img = _img(figure, "train loss") if figure else ""
    return '<section id="trials"><h2>(f) All trials</h2>' + \
        _table(headers, body, "trials-table", classes) + note + img + "</section>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f2f2f2; }
tr.status-FAILED td, tr.status-KILLED td { background: #fde8e8; }
img { max-width: 100%; display: block; margin: 0.8em 0; }
.note { color: #555; font-style: italic; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def render_html(rec: SweepRecord, points: Sequence[Point], gaps: Sequence[GapRow],
                figures: dict[str, str | None]) -> str:
    done = sum(t.usable for t in rec.trials)
    header = (f"<h1>mixray report: {html.escape(rec.experiment)}</h1>"
              f"<p>Parent run <code>{html.escape(rec.parent_id)}</code> "
              f"({html.escape(rec.parent_name)}, {html.escape(rec.parent_status)}, started "
              f"{html.escape(rec.started)}); {len(rec.trials)} trials, {done} in the curves. "
              f"Teachers: {html.escape(', '.join(rec.teachers) or 'unknown')}. "
              f"Tracking URI: <code>{html.escape(rec.tracking_uri)}</code>.</p>")
    sections = [section_gaps(rec, gaps), section_curve(points, figures.get("curve")),
                section_schedules(points, figures.get("schedules")),
                section_benchmarks(rec.trials, figures.get("benchmarks")),
                section_data_card(rec, figures.get("data_card")),
                section_trials(rec, figures.get("train_loss"))]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>mixray report: {html.escape(rec.experiment)}</title><style>{CSS}</style>"
            f"</head><body>{header}{''.join(sections)}</body></html>\n")


# --------------------------------------------------------------------------- driver


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
    }


def _summary(rec: SweepRecord, points: Sequence[Point], gaps: Sequence[GapRow]) -> dict[str, Any]:
    trials = [{k: v for k, v in asdict(t).items() if k not in ("loss_curve", "data_card")}
              for t in rec.trials]
    return {"experiment": rec.experiment, "parent_id": rec.parent_id, "teachers": rec.teachers,
            "curate": rec.curate, "gaps": [asdict(g) for g in gaps],
            "curve": [asdict(p) for p in points], "trials": trials}


def default_out(experiment: str, parent_id: str) -> Path:
    return Path("runs") / "reports" / experiment / parent_id


def write_report(experiment: str, tracking_uri: str = DEFAULT_TRACKING_URI,
                 parent_id: str | None = None, out: str | Path | None = None) -> Path:
    """Write index.html, summary.json and the figures; return the path of index.html."""
    rec = load_sweep_record(experiment, tracking_uri, parent_id)
    out_dir = Path(out) if out is not None else default_out(experiment, rec.parent_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = curve_points(rec.trials)
    gaps = gap_rows(points)
    figures = make_figures(rec, points, gaps, out_dir)
    (out_dir / "summary.json").write_text(json.dumps(_summary(rec, points, gaps), indent=2))
    index = out_dir / "index.html"
    index.write_text(render_html(rec, points, gaps, figures), encoding="utf-8")
    log.info("report: wrote %s", index)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mixray.report",
        description="Learnability-gap tables and Mix Distillation plots of one sweep, from MLflow.")
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the sweep name).")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                        help=f"MLflow tracking URI (default: {DEFAULT_TRACKING_URI}).")
    parser.add_argument("--parent", default=None,
                        help="Parent run id of the invocation (default: the latest one).")
    parser.add_argument("--out", default=None,
                        help="Output folder (default: runs/reports/<experiment>/<parent id>/).")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per trial
    logs.configure()
    try:
        index = write_report(args.experiment, args.tracking_uri, args.parent, args.out)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
