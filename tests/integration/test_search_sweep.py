"""Search beyond the long-share grid, on the smoke sweep: any key as an axis, and ASHA stopping a
trial early on the validation loss (problems held out of every mix) that Ray Train forwards to
Tune at the steps of ASHA's rungs."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from mixray.config import load_sweep
from mixray.sweep.run import run_sweep
from mixray.sweep.summary import format_summary

REPO = Path(__file__).resolve().parents[2]


def test_asha_stops_the_trial_that_does_not_learn(smoke_sweep) -> None:
    smoke_cfg, _, _ = smoke_sweep  # same run root: generation and curation come from its cache
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [
        f"run_root={smoke_cfg.run_root_path}", "name=smoke-asha", "search.long_share=[0.5]",
        # Trial order is the grid's: the learning student first, so its losses set the rungs the
        # second (lr 1e-7: its loss stays where it started) is measured against.
        "search.space={train.lr: {grid: [3.0e-3, 1.0e-7]}}", "search.max_concurrent_trials=1",
        # val_loss: on 4 problems held out of both trials' mixes (mix/validation.py)
        "search.scheduler={kind: asha, metric: val_loss, mode: min, grace_period: 1}",
        "mix.validation_problems=4", "train.max_steps=6",
        "train.num_workers=1",  # one is enough here (each starts in 6 s)
    ])
    summary = run_sweep(cfg)

    assert all(stage["cached"] for stage in summary["stages"].values())
    rows = {t["params"]["train.lr"]: t for t in summary["trials"]}
    assert rows[3e-3]["error"] is None and not rows[3e-3]["stopped_early"]
    assert rows[3e-3]["eval_accuracy"] is not None
    assert rows[1e-7]["stopped_early"] and rows[1e-7]["error"] is None
    assert summary["status"] == "finished"

    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    exp = client.get_experiment_by_name("smoke-asha")
    children = {r.data.tags["mixray.trial"]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert set(children) == {rows[3e-3]["trial"], rows[1e-7]["trial"]}
    good, stopped = children[rows[3e-3]["trial"]], children[rows[1e-7]["trial"]]
    assert good.info.status == "FINISHED" and good.data.params["train.lr"] == "0.003"
    assert stopped.info.status == "KILLED" and "asha" in stopped.data.tags["mixray.stopped_early"]
    # Its steps so far are logged although it was killed, and they end where ASHA stopped it.
    steps = sorted(m.step for m in client.get_metric_history(stopped.info.run_id, "train_loss"))
    stop_step = int(stopped.data.tags["mixray.stopped_early"].rsplit(" ", 1)[-1])
    assert steps and steps[-1] == stop_step < cfg.train.max_steps
    # val_loss was computed at every rung up to the stop (1, 2, 4, ...)
    val_steps = [m.step for m in client.get_metric_history(stopped.info.run_id, "val_loss")]
    assert sorted(val_steps) == [s for s in (1, 2, 4) if s <= stop_step]
    assert {"val_loss", "val_loss/long", "val_loss/short"} <= set(good.data.metrics)
    card = next((cfg.run_root_path / "trials").glob(f"*/{rows[3e-3]['trial']}/data_card.json"))
    assert json.loads(card.read_text())["validation"] == {"problems": 4, "rows": 8}  # x 2 pools
    assert "stopped early" in format_summary(cfg, summary | {"summary_path": "-"})
    # train.keep_checkpoints: resume. The stopped trial keeps no checkpoint, the finished one
    # its student only
    train = cfg.run_root_path / "train"
    assert not (train / f"{summary['invocation']}-{rows[1e-7]['trial']}").exists()
    kept = train / f"{summary['invocation']}-{rows[3e-3]['trial']}"
    assert list(kept.glob("checkpoint_*/model")) and not list(kept.rglob("*.pt"))
