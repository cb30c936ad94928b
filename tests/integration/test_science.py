"""The smoke sweep with shares 0 and 1 (the two ends ΔLong pairs) over two seeds, as a researcher
reads it: the parent run holds the student's baseline (evaluated before fine-tuning), ΔLong with
its paired interval and the power; each seed is its own trial; the summary and the report give
the means over seeds, the significance marks and the power line."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mlflow.tracking import MlflowClient

from mixray.config import load_sweep
from mixray.report.build import write_report
from mixray.sweep.run import run_sweep
from mixray.sweep.summary import format_summary

REPO = Path(__file__).resolve().parents[2]


def test_seeds_baseline_and_paired_gaps_reach_the_parent_run_and_report(smoke_sweep,
                                                                        tmp_path: Path) -> None:
    smoke_cfg, _, _ = smoke_sweep  # same run root: generation and curation come from its cache
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [
        f"run_root={smoke_cfg.run_root_path}", "name=smoke-science",
        "search.long_share=[0.0, 1.0]", "search.seeds=[0, 1]", "train.max_steps=2",
        "train.num_workers=1"])  # one is enough here (each starts in 6 s)
    summary = run_sweep(cfg)
    student = cfg.students[0]
    assert summary["status"] == "finished"
    assert len(summary["trials"]) == 4
    assert sorted((t["long_share"], t["params"]["seed"]) for t in summary["trials"]) == [
        (s, seed) for s in (0.0, 1.0) for seed in (0, 1)]
    # Two seeds of one point trained differently (train.seed and mix.seed follow the seed)
    points = {p["share"]: p for p in summary["points"]}
    assert set(points) == {0.0, 1.0} and all(p["n"] == 2 for p in points.values())
    losses = {t["params"]["seed"]: t["train_loss"] for t in summary["trials"]
              if t["long_share"] == 1.0}
    assert losses[0] != losses[1]

    (gap,) = summary["gaps"]
    test = gap["gap_test"]
    assert gap["name"] == "ΔLong" and test is not None
    assert test["low"] <= gap["gap"] <= test["high"] and tuple(test["seeds"]) == (2, 2)
    assert test["n_problems"] == cfg.problems.eval_size
    base = summary["baselines"][student]
    assert 0.0 <= base["accuracy"] <= 1.0

    c = MlflowClient(tracking_uri=cfg.tracking_uri)
    parent = c.get_run(summary["mlflow"]["parent_run_id"])
    m = parent.data.metrics
    key = f"{student}/long_vs_short/gap"
    assert math.isclose(m[key], gap["gap"], abs_tol=1e-9)
    assert math.isclose(m[f"{key}_low"], test["low"], abs_tol=1e-9)
    assert math.isclose(m[f"{key}_high"], test["high"], abs_tol=1e-9)
    assert m[f"{key}_significant"] == float(test["significant"])
    assert math.isclose(m[f"baseline/{student}/eval_accuracy"], base["accuracy"])
    assert m["power/detectable_difference"] > 0 and m["power/problems_needed"] >= 1
    baseline = json.loads(Path(c.download_artifacts(
        parent.info.run_id, f"baselines/{student}/scores.json", str(tmp_path))).read_text())
    assert len(baseline["benchmarks"]["heldout"]) == cfg.problems.eval_size
    children = c.search_runs([parent.info.experiment_id],
                             f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.params["search.seed"] for r in children) == ["0", "0", "1", "1"]
    assert {r.data.params["train.seed"] for r in children} == {"0", "1"}

    text = format_summary(cfg, summary)
    assert "base model (before fine-tuning): eval acc" in text
    assert "mean over 2 seeds" in text and "power: with 8 held-out problems" in text
    assert "ΔLong = P(long only) - P(short only) = " in text and ("*" in text or "n.s." in text)

    page = write_report(cfg.experiment, cfg.tracking_uri, out=tmp_path / "report")
    html = page.read_text()
    assert 'id="power-line"' in html and "power: with 8 held-out problems" in html
    assert 'id="gains-table"' in html and ("n.s." in html or "] *" in html)
    report = json.loads((page.parent / "summary.json").read_text())
    assert report["gaps"][0]["gap_test"]["low"] == test["low"]  # the same records, the same test
    assert report["baselines"][student]["accuracy"] == base["accuracy"]
