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


def _parent_and_child(tmp_path: Path):
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", [f"run_root={tmp_path}"])
    parent = tracking.start_parent(cfg, {"curate": {}})
    trial = cfg.trials()[0]
    trial_cfg = cfg.for_trial(trial.student, trial.params)
    return cfg, parent, trial_cfg, tracking.start_child(trial_cfg, parent, trial)


def test_a_stopped_trial_stays_killed_when_its_ending_raises_later(tmp_path: Path) -> None:
    # Tune ends a stopped trial's actor after the driver may have closed its run: the error
    # that ending raises in the trial arrives last and must not turn ASHA's cut into a failure.
    cfg, _, trial_cfg, run_id = _parent_and_child(tmp_path)
    tracking.stop_child(cfg, run_id, [{"step": 2, "val_loss": 3.9}], "asha at step 2")
    tracking.fail_child(trial_cfg, run_id, "RayActorError: the actor is ending")
    run = tracking.client(cfg).get_run(run_id)
    assert run.info.status == "KILLED" and "mixray.error" not in run.data.tags
    assert run.data.tags[tracking.STOPPED_TAG] == "asha at step 2"


def test_an_interrupted_sweep_closes_its_running_trials_killed(tmp_path: Path) -> None:
    cfg, parent, _, running = _parent_and_child(tmp_path)
    other = cfg.trials()[1]
    done = tracking.start_child(cfg.for_trial(other.student, other.params), parent, other)
    tracking.client(cfg).set_terminated(done, "FINISHED")
    tracking.end_parent(cfg, parent, "KILLED")
    c = tracking.client(cfg)
    assert c.get_run(parent).info.status == "KILLED"
    assert c.get_run(running).info.status == "KILLED"
    assert c.get_run(done).info.status == "FINISHED"
