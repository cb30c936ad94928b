"""The summary a sweep prints when it ends: per student its trials, its base model, the mean
over seeds, the best trial by `search.metric`, the gaps with their paired intervals; the power;
the cost against its estimate; and where to look next. Reads only the summary document
(`mixray.sweep.run.run_sweep`'s summary.json), so a summary read back from disk prints the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixray import disk
from mixray.artifacts import teacher_records
from mixray.config import SweepConfig
from mixray.cost.actual import format_comparison
from mixray.science.analysis import Power, power_line
from mixray.sweep.console import tail
from mixray.sweep.upstream import format_stages


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mix_text(trial: dict[str, Any]) -> str:
    """The mix's rows, and how many of its pools ran dry (.0f: MLflow gives resumed counts back
    as floats)."""
    dry = trial.get("mix_pools_ran_dry")
    return _fmt(trial["mix_rows"], ".0f") + (f" ({dry:.0f} dry)" if dry else "")


def _params_text(params: dict[str, Any]) -> str:
    from mixray.search import value_token

    return " ".join(value_token(k, v) for k, v in params.items()) or "-"


def format_summary(cfg: SweepConfig, summary: dict[str, Any], log: Path | None = None) -> str:
    """Per student: trials (search values -> metrics), the best one, the gaps; each failed
    trial's last error lines and where its whole output is (``log``); then where to look."""
    blocks = []
    for student in cfg.students:
        trials = [t for t in summary["trials"] if t["student"] == student]
        rows = [("trial", "values", "long share", "mix rows", "train loss", "eval acc ± se",
                 "status")]
        for t in trials:
            status = ("FAILED" if t["error"] else "stopped early" if t["stopped_early"]
                      else "resumed" if t["resumed"] else "ok")
            rows.append((t["trial"], _params_text(t["params"]), f"{t['long_share']:g}",
                         _mix_text(t), _fmt(t["train_loss"], ".4f"),
                         _fmt(t["eval_accuracy"], ".3f") + " ± " +
                         _fmt(t["eval_accuracy_stderr"], ".3f"), status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"student {student}:"] + ["  " + "  ".join(c.ljust(w) for c, w in zip(
            r, widths, strict=True)) for r in rows]
        if dry := [t["trial"] for t in trials if t.get("mix_pools_ran_dry")]:
            lines.append(f"  pools ran dry (the others filled in) in {', '.join(dry)}: see "
                         "ran_dry in their data_card.json, or set mix.on_pool_exhausted: error")
        lines += _science(cfg, summary, student, trials)
        lines += _failures(trials, log)
        blocks.append("\n".join(lines))
    if summary.get("power"):
        blocks.append(power_line(Power(**summary["power"]), cfg.analysis))
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings_s"].items())
    store = cfg.tracking_uri
    ui = (f"{store}   (the tracking server's own UI)" if store.startswith(("http:", "https:"))
          else f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri "
          f"{store} --workers 1 --host 127.0.0.1 --port 5000   # then open http://127.0.0.1:5000")
    size = f"run root: {summary['disk']['run_root']} {disk.human_size(summary['disk']['bytes'])}"
    if "cost" in summary:
        blocks.append(format_comparison(summary["cost"]))
    return ("\n" + format_stages(teacher_records(summary["stages"])) + "\n\n" + "\n\n".join(blocks)
            + f"\n\ntime: {stages}\n{size}\n"
            f"summary: {summary['summary_path']}\n"
            f"MLflow experiment {cfg.experiment!r}, "
            f"parent run {summary['mlflow']['parent_run_id']}."
            f"\nOpen the UI:\n  {ui}\nComparison report (HTML + figures):\n"
            "  python -m mixray.report "
            f"--experiment {cfg.experiment} --tracking-uri {store}\n")


def _best(cfg: SweepConfig, summary: dict[str, Any], student: str,
          trials: list[dict[str, Any]]) -> str | None:
    """The best by search.metric/mode: the best point (the mean over its seeds) where seeds
    repeat the points, else the best trial."""
    pick = max if cfg.search.mode == "max" else min
    points = [p for p in summary.get("points", []) if p["student"] == student
              and p.get("value") is not None]
    if any(p["n"] > 1 for p in points):
        b = pick(points, key=lambda p: p["value"])
        where = f"long share {b['share']:g}" + (f" {b['point']}" if b["point"] else "")
        return f"{where} (mean over {b['n']} seeds), {b['value']:.4g}"
    scored = [t for t in trials if t.get("value") is not None and t["error"] is None]
    if not scored:
        return None
    t = pick(scored, key=lambda t: t["value"])
    return f"{t['trial']} ({_params_text(t['params'])}), {t['value']:.4g}"


def _interval(test: dict[str, Any] | None) -> str:
    """`[low, high]` at the analysis level, and `*` when it excludes 0 (significant)."""
    if test is None:
        return ""
    mark = " *" if test["significant"] else " (n.s.)"
    return f" [{test['low']:+.3f}, {test['high']:+.3f}]{mark}"


def _science(cfg: SweepConfig, summary: dict[str, Any], student: str,
             trials: list[dict[str, Any]]) -> list[str]:
    """The base model, the means over seeds, the best trial, and the gaps with intervals."""
    lines = []
    base = summary.get("baselines", {}).get(student)
    if base is not None:
        lines.append(f"  base model (before fine-tuning): eval acc {base['accuracy']:.3f} ± "
                     f"{_fmt(base['stderr'], '.3f')}")
    elif "baselines" in summary:
        lines.append("  base model (before fine-tuning): its evaluation failed (the log above; "
                     f"tag mixray.baseline_error.{Path(student).name} on the parent run)")
    for p in summary.get("points", []):
        if p["student"] == student and p["n"] > 1:
            lines.append(
                f"  long share {p['share']:g}{' ' + p['point'] if p['point'] else ''}: mean "
                f"over {p['n']} seeds {p['accuracy']:.3f} ± {_fmt(p['stderr'], '.3f')} (seeds "
                f"± {_fmt(p['seed_stderr'], '.3f')}, evaluation ± "
                f"{_fmt(p['sampling_stderr'], '.3f')})")
    if (best := _best(cfg, summary, student, trials)) is not None:
        lines.append(f"  best by {cfg.search.metric} ({cfg.search.mode}): {best}")
    level = f"{cfg.analysis.level:.0%}"
    for g in summary["gaps"]:
        if g["student"] == student and (g["gap"], g["best_mix_gain"]) != (None, None):
            lines.append(
                f"  {g['name']} = P({g['pools'][0]} only) - P({g['pools'][1]} only) = "
                f"{_fmt(g['gap'], '+.3f')}{_interval(g['gap_test'])}; best mix (share "
                f"{_fmt(g['best_mix_share'], 'g')}) vs best single source: "
                f"{_fmt(g['best_mix_gain'], '+.3f')}{_interval(g['best_mix_test'])}")
    if any(g["student"] == student and (g["gap_test"] or g["best_mix_test"])
           for g in summary["gaps"]):
        lines.append(f"  [{level} paired interval over problems and seeds]; * excludes 0")
    return lines


def _failures(trials: list[dict[str, Any]], log: Path | None) -> list[str]:
    """A failed trial's last error lines, and where its whole output is."""
    lines = []
    for t in trials:
        if t["error"] and t["error"] not in ("did not run", "did not finish"):
            last = tail(t["error"]).replace("\n", "\n      ")
            lines.append(f"  {t['trial']} failed:\n      {last}")
    if lines:
        where = log if log is not None else "the output above"
        lines.append(f"  the whole error and the trial's output: {where}")
    return lines
