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
(tag ``mixray.kind=sweep``) and a child run per trial (tag ``mlflow.parentRunId``). This module
is the driver: `mixray.tracking` reads the runs, `mixray.analysis` computes the gaps and curves,
`mixray.report_figures` draws and `mixray.report_html` renders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mixray import logs
from mixray.analysis import GapRow, Point, SweepRecord, curve_points, gap_rows
from mixray.report_figures import make_figures
from mixray.report_html import render_html
from mixray.store import default_tracking_uri
from mixray.tracking import load_sweep_record

log = logging.getLogger(__name__)


def _summary(rec: SweepRecord, points: Sequence[Point], gaps: Sequence[GapRow]) -> dict[str, Any]:
    trials = [{k: v for k, v in asdict(t).items() if k not in ("loss_curve", "data_card")}
              for t in rec.trials]
    return {"experiment": rec.experiment, "parent_id": rec.parent_id, "teachers": rec.teachers,
            "curate": rec.curate, "gaps": [asdict(g) for g in gaps],
            "curve": [asdict(p) for p in points], "trials": trials}


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
    parser.add_argument("--tracking-uri", default=default_tracking_uri(),
                        help="MLflow tracking URI (default: %(default)s).")
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
