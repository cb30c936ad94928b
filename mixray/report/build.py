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
(f) every trial with its status. Trials that did not finish are listed but left out of (a)-(d);
(g) each point against its student's base model (evaluated before fine-tuning), and the power:
    the smallest difference the evaluation could detect, and the problems a named one needs;
(h) the next mix: `mixray.science.proposal`'s predicted best share per curve, with its interval.

Differences in (a) and (g) carry a paired interval over the same problems (and seeds) and a
significance mark; "best" is the sweep's `search.metric` and `mode`.

The MLflow layout it reads is the one ``mixray.tracking`` writes: a parent run per invocation
(tag ``mixray.kind=sweep``) and a child run per trial (tag ``mlflow.parentRunId``). This module
is the driver (`write_report`; the command line is `mixray.report.__main__`'s):
`mixray.tracking.records` reads the runs, `mixray.science.analysis` computes the gaps and
curves, `mixray.report.figures` draws and `mixray.report.html` renders.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mixray.report.figures import make_figures
from mixray.report.html import render_html, section_proposals
from mixray.science.analysis import Findings, SweepRecord, record_findings
from mixray.science.document import findings_document, recorded_row
from mixray.science.proposal import describe, propose
from mixray.store import default_tracking_uri
from mixray.tracking.records import load_sweep_record

log = logging.getLogger(__name__)


def _summary(rec: SweepRecord, found: Findings) -> dict[str, Any]:
    """The report's summary.json, in the sweep's shape (`mixray.science.document`), and what
    only MLflow holds (the teachers, their curation, the search's metric and mode)."""
    trials = [recorded_row(t) for t in rec.trials]
    return {"mlflow": {"tracking_uri": rec.tracking_uri, "experiment": rec.experiment,
                       "parent_run_id": rec.parent_id},
            "teachers": rec.teachers, "curate": rec.curate, "metric": rec.metric,
            "mode": rec.mode, "trials": trials} | findings_document(found, rec.baselines)


def default_out(experiment: str, parent_id: str) -> Path:
    return Path("runs") / "reports" / experiment / parent_id


def write_report(experiment: str, tracking_uri: str | None = None,
                 parent_id: str | None = None, out: str | Path | None = None) -> Path:
    """Write index.html, summary.json and the figures; return the path of index.html. No
    ``tracking_uri``: the default store (``runs/mlflow.db`` under the working directory)."""
    uri = default_tracking_uri() if tracking_uri is None else tracking_uri
    rec = load_sweep_record(experiment, uri, parent_id)
    out_dir = Path(out) if out is not None else default_out(experiment, rec.parent_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = record_findings(rec)
    figures = make_figures(rec, found.points, found.gaps, out_dir)
    (out_dir / "summary.json").write_text(json.dumps(_summary(rec, found), indent=2))
    index = out_dir / "index.html"
    proposals = [describe(p) for p in propose(found.points)]
    index.write_text(render_html(rec, found, figures, [section_proposals(proposals)]),
                     encoding="utf-8")
    log.info("report: wrote %s", index)
    return index
