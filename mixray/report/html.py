"""The report's page: ``index.html``, self-contained apart from the PNG figures next to it.

Sections (a) learnability gaps, each difference with its paired interval and significance mark,
(b) accuracy against mix share (means over seeds, their errors apart), (c) schedules compared,
(d) per-benchmark accuracy, (e) the data card, (f) every trial with its status, (g) trust: each
point against its base model and what the evaluation could detect, rendered from the plain
records of `mixray.science.analysis` and the figure names `mixray.report.figures` returns. No
scripts, stylesheets or remote images: the page opens from a file:// URL anywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

from mixray.science.analysis import (
    GAP_NAMES,
    Findings,
    Gain,
    GapRow,
    Point,
    SweepRecord,
    Trial,
    gap_name,
    power_line,
)
from mixray.science.significance import Comparison


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


def tested(value: float | None, test: Comparison | None) -> str:
    """A difference, its paired interval, and ``*`` when the interval excludes 0 (``n.s.``
    when it does not); no interval when per-problem scores were not logged."""
    if test is None:
        return fmt(value, signed=True)
    mark = "*" if test.significant else "n.s."
    return f"{fmt(value, signed=True)} [{fmt(test.low, signed=True)}, " \
           f"{fmt(test.high, signed=True)}] {mark}"


def _gap_table(rows: Sequence[GapRow], pools: tuple[str, str], table_id: str) -> str:
    a, b = pools
    headers = ["Student", f"P({a} only)", f"P({b} only)", gap_name(pools),
               f"Best mix ({a} share)", "Best mix accuracy", "Best single source",
               "Best mix − best single"]
    body = [[r.student, fmt(r.p_first), fmt(r.p_second), tested(r.gap, r.gap_test),
             _mix_label(r.best_mix), fmt(r.best_mix.accuracy if r.best_mix else None),
             _single_label(r), tested(r.mix_gain, r.mix_test)] for r in rows]
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
    intro = _note(f"P is the student's eval accuracy after training on one source only (share "
                  f"1: first pool only, share 0: second pool only); the best mix is the mixed "
                  f"point (0 < share < 1) best by {rec.metric} ({rec.mode}). Differences carry "
                  f"their {rec.analysis.level:.0%} interval, paired over the same problems "
                  f"(a bootstrap over problems and seeds); * marks an interval that excludes 0, "
                  f"n.s. one that does not. Only finished trials count.")
    return '<section id="gaps"><h2>(a) Learnability gaps</h2>' + intro + "".join(parts) + \
        "</section>"


def section_curve(points: Sequence[Point], figure: str | None) -> str:
    body = [[p.student, f"{p.pools[0]} vs {p.pools[1]}", p.schedule or "", f"{p.share:g}",
             p.point, _acc(p.accuracy, p.stderr), p.n, fmt(p.seed_stderr),
             fmt(p.sampling_stderr), ", ".join(p.trials)] for p in points]
    content = (_img(figure, "accuracy against long share") if figure else "") + _table(
        ["Student", "Pools", "Schedule", "Share", "Other values", "Accuracy", "Trials (n)",
         "± seeds", "± evaluation", "Trial names"],
        body, "curve-points") + _note(
        "A point is the mean over its seeds; ± seeds is their spread over sqrt(n), ± evaluation "
        "the evaluations' own error over problems and samples; Accuracy's ± combines both.") \
        if points else _note("No finished trial with an eval accuracy.")
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


def section_benchmarks(trials: Sequence[Trial], figure: str | None,
                       length: str | None = None) -> str:
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
    if length:  # accuracy against the evaluation's length, per trial
        content += _img(length, "accuracy against length")
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


def _gain_row(g: Gain) -> list[Any]:
    p = g.point
    return [p.student, f"{p.share:g}", p.point, p.n, fmt(g.base), fmt(p.accuracy),
            tested(g.gain, g.test)]


def section_trust(rec: SweepRecord, found: Findings) -> str:
    """Each point against its student's base model, and what the evaluation could detect."""
    if found.gains:
        base = _table(["Student", "Share", "Other values", "Seeds", "Base model", "Trained",
                       "Gain over base"], [_gain_row(g) for g in found.gains], "gains-table")
    else:
        base = _note("No baseline evaluation on the parent run (a sweep from before baselines "
                     "were logged, or no finished trial).")
    return ('<section id="trust"><h2>(g) Against the base model, and power</h2>' + base
            + f'<p id="power-line">{html.escape(power_line(found.power, rec.analysis))}</p>'
            + "</section>")


def section_proposals(lines: Sequence[str]) -> str:
    """(h) Where the next sweep should look: `mixray.science.proposal`'s lines, one per curve."""
    body = "".join(f"<li>{html.escape(line)}</li>" for line in lines) if lines else ""
    content = f'<ul id="proposals">{body}</ul>' if lines else _note("No curve to fit yet.")
    hint = _note("A weighted quadratic of accuracy against the share (each point weighed by its "
                 "error), its best share with a bootstrap interval; python -m mixray.propose "
                 "--write NEXT.yaml writes the next sweep file around it.")
    return f'<section id="next-mix"><h2>(h) The next mix</h2>{content}{hint}</section>'


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


def render_html(rec: SweepRecord, found: Findings, figures: dict[str, str | None],
                extra: Sequence[str] = ()) -> str:
    """The page; ``extra`` sections (already HTML) go after the others."""
    points, gaps = found.points, found.gaps
    done = sum(t.usable for t in rec.trials)
    header = (f"<h1>mixray report: {html.escape(rec.experiment)}</h1>"
              f"<p>Parent run <code>{html.escape(rec.parent_id)}</code> "
              f"({html.escape(rec.parent_name)}, {html.escape(rec.parent_status)}, started "
              f"{html.escape(rec.started)}); {len(rec.trials)} trials, {done} in the curves. "
              f"Teachers: {html.escape(', '.join(rec.teachers) or 'unknown')}. "
              f"Tracking URI: <code>{html.escape(rec.tracking_uri)}</code>.</p>")
    sections = [section_gaps(rec, gaps), section_curve(points, figures.get("curve")),
                section_schedules(points, figures.get("schedules")),
                section_benchmarks(rec.trials, figures.get("benchmarks"), figures.get("length")),
                section_data_card(rec, figures.get("data_card")),
                section_trials(rec, figures.get("train_loss")), section_trust(rec, found),
                *extra]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>mixray report: {html.escape(rec.experiment)}</title><style>{CSS}</style>"
            f"</head><body>{header}{''.join(sections)}</body></html>\n")
