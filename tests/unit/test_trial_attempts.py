"""A trial run again under the same parent (Tune retrying it after its node was lost, or
--resume) continues its one MLflow child run (a real sqlite store, no Ray). Tracking takes a
`Target` and plain values: no sweep config is needed to write a sweep's runs."""

from __future__ import annotations

from pathlib import Path

from mixray import tracking
from mixray.store import default_tracking_uri
from mixray.tracking.writer import ATTEMPTS_TAG

CONFIG = {"name": "t", "search": {"metric": "eval_accuracy", "mode": "max"}}


def _target(tmp_path: Path) -> tracking.Target:
    return tracking.Target(default_tracking_uri(tmp_path), "attempts")


def _child(target: tracking.Target, parent: str, name: str) -> str:
    return tracking.start_child(target, parent, name, {"mix.long_share": 0.5},
                                {"student": "tiny-random", "long_share": 0.5}, CONFIG)


def test_a_retried_trial_continues_its_child_run(tmp_path: Path) -> None:
    target = _target(tmp_path)
    parent = tracking.start_parent(target, "t-sweep", CONFIG, {"curate": {}})
    first = _child(target, parent, "a")
    tracking.fail_child(target, first, "the node running it was lost")
    again = _child(target, parent, "a")
    assert again == first
    run = target.client().get_run(again)
    assert run.info.status == "RUNNING" and run.data.tags[ATTEMPTS_TAG] == "2"
    assert run.data.params["student"] == "tiny-random"
    other = _child(target, parent, "b")
    assert other != first   # another trial has its own run
    children = target.client().search_runs(
        [run.info.experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{parent}'")
    assert len(children) == 2


def test_the_parent_logs_the_sweep_less_its_search(tmp_path: Path) -> None:
    target = _target(tmp_path)
    parent = tracking.start_parent(target, "t-sweep", CONFIG | {"mix": {"seed": 3}},
                                   {"curate": {"long": {"rows": 4.0}}})
    run = target.client().get_run(parent)
    assert run.data.params["sweep.mix.seed"] == "3" and run.data.params["search.mode"] == "max"
    assert not any(k.startswith("sweep.search") for k in run.data.params)
    assert run.data.metrics["curate.long.rows"] == 4.0


def _parent_and_child(tmp_path: Path) -> tuple[tracking.Target, str, str]:
    target = _target(tmp_path)
    parent = tracking.start_parent(target, "t-sweep", CONFIG, {"curate": {}})
    return target, parent, _child(target, parent, "a")


def test_a_stopped_trial_stays_killed_when_its_ending_raises_later(tmp_path: Path) -> None:
    # Tune ends a stopped trial's actor after the driver may have closed its run: the error
    # that ending raises in the trial arrives last and must not turn ASHA's cut into a failure.
    target, _, run_id = _parent_and_child(tmp_path)
    tracking.stop_child(target, run_id, [{"step": 2, "val_loss": 3.9}], "asha at step 2")
    tracking.fail_child(target, run_id, "RayActorError: the actor is ending")
    run = target.client().get_run(run_id)
    assert run.info.status == "KILLED" and "mixray.error" not in run.data.tags
    assert run.data.tags[tracking.STOPPED_TAG] == "asha at step 2"


def test_an_interrupted_sweep_closes_its_running_trials_killed(tmp_path: Path) -> None:
    target, parent, running = _parent_and_child(tmp_path)
    done = _child(target, parent, "b")
    target.client().set_terminated(done, "FINISHED")
    tracking.end_parent(target, parent, "KILLED")
    c = target.client()
    assert c.get_run(parent).info.status == "KILLED"
    assert c.get_run(running).info.status == "KILLED"
    assert c.get_run(done).info.status == "FINISHED"
