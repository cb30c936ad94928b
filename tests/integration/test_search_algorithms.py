"""Random and Optuna search end to end through Ray Tune, on the smoke sweep with two students
(tiny-random and a folder copy of it): random search draws its points once and shares them by
student, and training runs on the drawn value; a resumed Optuna sweep runs only the proposals
still missing, under the same MLflow parent, each student's study told its finished trials first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mixray.config import load_sweep
from mixray.sweep import tune as mixray_tune
from mixray.sweep.invocation import Invocation
from mixray.sweep.run import run_sweep

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "sweeps" / "smoke.yaml"
LR_BOUNDS = (1e-4, 1e-2)


@pytest.fixture(scope="module")
def copied_student(tmp_path_factory) -> str:
    """A second student: tiny-random's built folder copied under another name (a local folder
    is a student spec), so its trials are named apart from tiny-random's."""
    from mixray.models import resolve

    folder = tmp_path_factory.mktemp("students") / "tiny-copy"
    shutil.copytree(resolve("tiny-random"), folder)
    return str(folder)


def _children(cfg, parent_id: str) -> dict[str, list]:
    """The parent's child runs by trial name (a list: a rerun trial would show twice)."""
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    by_name: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent_id}'"):
        by_name.setdefault(run.data.tags["mixray.trial"], []).append(run)
    return by_name


def test_random_search_shares_its_draws_by_student_and_trains_on_them(
        smoke_sweep, copied_student) -> None:
    smoke_cfg, _, _ = smoke_sweep  # same run root: generation and curation come from its cache
    cfg = load_sweep(SMOKE, [
        f"run_root={smoke_cfg.run_root_path}", "name=smoke-random",
        f"students=[tiny-random, {copied_student}]", "search.algorithm=random",
        "search.long_share=[0.5]",  # a grid axis, crossed with one draw of the lr
        f"search.space={{train.lr: {{loguniform: [{LR_BOUNDS[0]}, {LR_BOUNDS[1]}]}}}}",
        "search.num_samples=1", "train.max_steps=2",
        "train.num_workers=1",  # one is enough here (each starts in 6 s)
    ])
    trials = cfg.trials()
    assert [Path(t.student).name for t in trials] == ["tiny-random", "tiny-copy"]
    summary = run_sweep(cfg)

    assert summary["status"] == "finished"
    assert all(stage["cached"] for stage in summary["stages"].values())
    rows = {t["trial"]: t for t in summary["trials"]}
    assert set(rows) == {t.name for t in trials}
    assert all(r["error"] is None and r["eval_accuracy"] is not None for r in rows.values())

    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    children = _children(cfg, summary["mlflow"]["parent_run_id"])
    assert set(children) == {t.name for t in trials}
    drawn = []
    for t in trials:
        [run] = children[t.name]
        assert run.info.status == "FINISHED"
        assert run.data.params["student"] == t.student
        assert json.loads(run.data.tags["mixray.params"]) == t.params
        lr = t.params["train.lr"]
        assert LR_BOUNDS[0] <= lr <= LR_BOUNDS[1] and lr != smoke_cfg.train.lr  # drawn
        assert float(run.data.params["train.lr"]) == lr  # the trial's config
        # ...and the optimizer's: step 1 trains at the full lr (no warmup, cosine from 1)
        first = [m.value for m in client.get_metric_history(run.info.run_id, "lr")
                 if m.step == 1]
        assert first == [pytest.approx(lr, rel=1e-9)]
        assert float(run.data.params["long_share"]) == 0.5
        drawn.append(t.params)
    assert drawn[0] == drawn[1]  # one draw, shared: both students trained on the same point


def test_resumed_optuna_sweep_runs_only_missing_proposals_told_the_finished_ones(
        smoke_sweep, copied_student, monkeypatch) -> None:
    smoke_cfg, _, _ = smoke_sweep
    overrides = [
        f"run_root={smoke_cfg.run_root_path}", "name=smoke-optuna",
        f"students=[tiny-random, {copied_student}]", "search.algorithm=optuna",
        "search.long_share=null", "search.space={mix.long_share: {uniform: [0.0, 1.0]}}",
        "train.max_steps=2", "train.num_workers=1",  # one is enough here (each starts in 6 s)
    ]
    first_cfg = load_sweep(SMOKE, overrides + ["search.num_samples=1"])
    first = run_sweep(first_cfg)
    assert first["status"] == "finished"
    first_runs = {name: runs[0].info.run_id for name, runs in
                  _children(first_cfg, first["mlflow"]["parent_run_id"]).items()}
    # As if it had been stopped there (test_sweep_failures.py interrupts a real one); --resume
    # may raise num_samples, search being outside the resume key.
    inv_dir = Path(first["summary_path"]).parent
    state = json.loads((inv_dir / "state.json").read_text())
    Invocation(first_cfg.root, first_cfg.name, inv_dir.name, state["resume_key"],
               state["parent_run_id"]).save("interrupted")
    before = {t["trial"]: t for t in first["trials"]}
    assert set(before) == set(first_runs) and len(before) == 2

    searches = []  # (finished trials it was given, the searcher), one per student

    def spy(cfg, finished):
        search = real(cfg, finished)
        searches.append((finished, search))
        return search

    real = mixray_tune._optuna_search
    monkeypatch.setattr(mixray_tune, "_optuna_search", spy)
    cfg = load_sweep(SMOKE, overrides + ["search.num_samples=2"])
    summary = run_sweep(cfg, resume=True)

    assert summary["status"] == "finished"
    assert summary["invocation"] == first["invocation"]
    parent_id = summary["mlflow"]["parent_run_id"]
    assert parent_id == first["mlflow"]["parent_run_id"]
    children = _children(cfg, parent_id)
    for student in cfg.students:
        mine = {name: runs for name, runs in children.items()
                if runs[0].data.params["student"] == student}
        assert len(mine) == cfg.search.num_samples  # exactly num_samples finished children
        assert all(len(runs) == 1 and runs[0].info.status == "FINISHED"
                   for runs in mine.values())
        rows = [t for t in summary["trials"] if t["student"] == student]
        assert all(r["error"] is None for r in rows)
        old = [r["trial"] for r in rows if r["resumed"]]
        new = [r["trial"] for r in rows if not r["resumed"]]
        # the first run's trial is not rerun (same child run), one new proposal ran
        assert len(old) == 1 and before[old[0]]["student"] == student and len(new) == 1
        assert set(mine) == {old[0], new[0]}
        assert mine[old[0]][0].info.run_id == first_runs[old[0]]

    # One study per student, told that student's finished trial (its point and its reward)
    # before it proposed the new one; and the new child is that study's proposal.
    assert [f[0].student for f, _ in searches] == cfg.students
    for finished, search in searches:
        [told] = finished
        name = next(n for n, t in before.items() if t["student"] == told.student)
        assert told.params == before[name]["params"]
        old_run = children[name][0]
        study = search._ot_study.trials
        assert len(study) == 2
        assert study[0].state.name == "COMPLETE"
        assert study[0].params == {"p0": told.params["mix.long_share"]}
        assert study[0].value == old_run.data.metrics["eval_accuracy"]
        [new_name] = [n for n, runs in children.items() if n != name
                      and runs[0].data.params["student"] == told.student]
        new_run = children[new_name][0]
        assert study[1].state.name == "COMPLETE"
        assert study[1].params == {
            "p0": json.loads(new_run.data.tags["mixray.params"])["mix.long_share"]}
        assert study[1].value == new_run.data.metrics["eval_accuracy"]
        assert study[1].params != study[0].params  # a new point, not the told one again
