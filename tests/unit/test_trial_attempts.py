"""A trial run again under the same parent (Tune retrying it after its node was lost, or
--resume) continues its one MLflow child run (a real sqlite store, no Ray)."""

from __future__ import annotations

from pathlib import Path

from mixray import tracking
from mixray.config import load_sweep

REPO = Path(__file__).resolve().parents[2]


def test_a_retried_trial_continues_its_child_run(tmp_path: Path) -> None:
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [f"run_root={tmp_path}"])
    parent = tracking.start_parent(cfg, {"curate": {}})
    trial = cfg.trials()[0]
    trial_cfg = cfg.for_trial(trial.student, trial.params)
    first = tracking.start_child(trial_cfg, parent, trial)
    tracking.fail_child(trial_cfg, first, "the node running it was lost")
    again = tracking.start_child(trial_cfg, parent, trial)
    assert again == first
    run = tracking.client(cfg).get_run(again)
    assert run.info.status == "RUNNING" and run.data.tags[tracking.ATTEMPTS_TAG] == "2"
    other = tracking.start_child(cfg.for_trial(cfg.trials()[1].student, cfg.trials()[1].params),
                                 parent, cfg.trials()[1])
    assert other != first   # another trial has its own run
    children = tracking.client(cfg).search_runs(
        [run.info.experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{parent}'")
    assert len(children) == 2
