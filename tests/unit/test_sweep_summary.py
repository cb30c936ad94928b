"""The sweep's printed summary says what is unknown or went short: an unknown standard error is
not shown as 0, and a trial whose mix had a pool run dry says so."""

from __future__ import annotations

import math
from pathlib import Path

from mixray.config import load_sweep
from mixray.sweep.summary import format_summary

SMOKE = Path(__file__).parents[2] / "sweeps" / "smoke.yaml"


def _summary(trials: list[dict]) -> dict:
    return {"trials": trials, "gaps": [], "timings_s": {}, "stages": {}, "summary_path": "-",
            "mlflow": {"parent_run_id": "p"}, "disk": {"run_root": "runs", "bytes": 0}}


def _trial(name: str, student: str, share: float, **metrics) -> dict:
    return {"trial": name, "student": student, "params": {"long_share": share},
            "long_share": share, "resumed": False, "error": None, "stopped_early": False,
            "mix_rows": 48, "mix_pools_ran_dry": 0, "train_loss": 1.5, "eval_accuracy": 0.25,
            "eval_accuracy_stderr": 0.05} | metrics | {
                "value": metrics.get("eval_accuracy", 0.25)}  # search.metric: eval_accuracy


def test_summary_shows_unknown_errors_and_pools_that_ran_dry() -> None:
    cfg = load_sweep(SMOKE, [])
    student = cfg.students[0]
    text = format_summary(cfg, _summary([
        _trial("ok", student, 0.0),
        # read back from MLflow on --resume: counts are floats
        _trial("short", student, 0.2, mix_rows=40.0, mix_pools_ran_dry=1.0,
               eval_accuracy_stderr=math.nan),
    ]))
    ok, short = (next(ln for ln in text.splitlines() if ln.strip().startswith(name + " "))
                 for name in ("ok", "short"))
    assert "48 " in ok and "dry" not in ok and "0.250 ± 0.050" in ok
    assert "40 (1 dry)" in short and "0.250 ± nan" in short and "± 0.000" not in short
    assert "pools ran dry (the others filled in) in short" in text


def test_gaps_come_from_the_trials_the_sweep_holds() -> None:
    """ΔLong = P(long only) - P(short only), and the best mix against the best single source,
    over finished trials only: a failed trial and one stopped early never count."""
    from mixray.sweep.run import gap_metrics, sweep_findings

    cfg = load_sweep(SMOKE, [])
    student = cfg.students[0]
    rows = [_trial("s0", student, 0.0, eval_accuracy=0.30),
            _trial("s02", student, 0.2, eval_accuracy=0.45),
            _trial("s1", student, 1.0, eval_accuracy=0.20),
            _trial("broken", student, 0.5, eval_accuracy=None, error="boom"),
            _trial("stopped", student, 0.8, eval_accuracy=0.90, stopped_early=True)]
    for row in rows:  # the search's own key, as SweepConfig.trials() names it
        row["params"] = {"mix.long_share": row["long_share"]}
    configs = {r["trial"]: cfg.for_trial(r["student"], r["params"]) for r in rows}
    found = sweep_findings(cfg, "no-such-invocation", rows, baselines={}, configs=configs)
    (gap,) = found.gaps
    assert (gap.gap_name, gap.pools) == ("ΔLong", ("long", "short"))
    assert math.isclose(gap.gap, 0.20 - 0.30) and math.isclose(gap.best_single, 0.30)
    assert gap.best_mix.share == 0.2 and math.isclose(gap.mix_gain, 0.45 - 0.30)
    assert gap.gap_test is None  # no per-problem scores on disk: no interval, none made up
    logged = gap_metrics(found)
    assert math.isclose(logged[f"{student}/long_vs_short/gap"], -0.10)
    assert logged[f"{student}/long_vs_short/best_mix_share"] == 0.2


def test_a_failed_trial_shows_its_last_error_lines_and_where_the_rest_is() -> None:
    cfg = load_sweep(SMOKE, [])
    student = cfg.students[0]
    error = ("ray.exceptions.RayTaskError(OSError): ray::_grid_trainable()\n"
             "Traceback (most recent call last):\n  File \"x.py\", line 3, in load\n"
             "    open(weights)\nOSError: no weights in /models/broken\n")
    text = format_summary(cfg, _summary([_trial("ok", student, 0.0),
                                         _trial("bad", student, 0.5, error=error,
                                                eval_accuracy=None)]),
                          log=Path("/runs/logs/smoke-1.log"))
    assert "  bad failed:\n" in text
    assert "      open(weights)\n      OSError: no weights in /models/broken" in text
    assert "the whole error and the trial's output: /runs/logs/smoke-1.log" in text
    assert "ok failed" not in text
