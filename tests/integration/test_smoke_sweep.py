"""The smoke sweep end to end on local Ray: MLflow lineage, artifacts, and caching across runs.

The sweep itself is the session fixture ``smoke_sweep`` (conftest.py), which test_browser.py
shares."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient


def _children(cfg, parent_id: str, experiment: str | None = None):
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(experiment or cfg.experiment)
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_parent_run_has_one_finished_child_per_trial(smoke_sweep) -> None:
    cfg, first, _ = smoke_sweep
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    parent = client.get_run(first["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = _children(cfg, parent.info.run_id)
    assert len(children) == len(cfg.trials()) == 2
    # the training problems were checked against the benchmark before generation (issue 28)
    assert parent.data.metrics["decontamination/dropped/heldout"] == 0
    assert first["stages"]["problems"]["summary"]["decontamination"]["dropped"] == {"heldout": 0}
    shares = sorted(float(c.data.params["long_share"]) for c in children)
    assert shares == sorted(cfg.search.long_share)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["student"] == "tiny-random"
        assert "teachers.long.model" in child.data.params
        assert child.data.metrics["train_loss"] > 0
        assert 0.0 <= child.data.metrics["eval_accuracy"] <= 1.0
        assert child.data.metrics["eval_n"] == cfg.problems.eval_size
        steps = client.get_metric_history(child.info.run_id, "train_loss")
        assert [m.step for m in steps] == list(range(1, cfg.train.max_steps + 1))


def test_runs_link_their_datasets_and_record_system_metrics(smoke_sweep) -> None:
    """MLflow's dataset view: each trial's mix manifest (digest = its content hash, as in its
    data card), the parent's problems and pools; and the trial's node's CPU and memory."""
    cfg, first, _ = smoke_sweep
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    parent = client.get_run(first["mlflow"]["parent_run_id"])
    names = {d.dataset.name: d for d in parent.inputs.dataset_inputs}
    assert set(names) == {"problems/train", "problems/eval", "pool/long", "pool/short"}
    assert names["problems/eval"].tags[0].value == "eval problems"
    assert json_profile(names["problems/eval"])["num_rows"] == cfg.problems.eval_size
    for child in _children(cfg, parent.info.run_id):
        (mix,) = child.inputs.dataset_inputs
        assert mix.dataset.name == "mix" and mix.tags[0].value == "training"
        assert mix.dataset.digest == child.data.tags["mixray.manifest_hash"]
        assert json_profile(mix)["num_rows"] == child.data.metrics["mix_rows"]
        system = [k for k in child.data.metrics if k.startswith("system/")]
        assert any(k.endswith("cpu_utilization_percentage") for k in system), system
        assert any(k.endswith("system_memory_usage_megabytes") for k in system), system


def json_profile(dataset_input) -> dict:
    import json

    return json.loads(dataset_input.dataset.profile)


def test_trials_in_the_summary(smoke_sweep) -> None:
    cfg, first, _ = smoke_sweep
    assert len(first["trials"]) == 2
    assert all(t["error"] is None and t["mix_rows"] > 0 for t in first["trials"])
    # share 0 trains on short CoT only (less the problems held out for val_loss); 0.5 on both
    rows = {t["long_share"]: t["mix_rows"] for t in first["trials"]}
    assert rows[0.0] == cfg.problems.train_size - cfg.mix.validation_problems


def test_generation_artifacts_exist(smoke_sweep) -> None:
    cfg, first, _ = smoke_sweep
    for label in cfg.teachers:
        gen = Path(first["stages"][f"generate.{label}"]["path"])
        table = pq.read_table(gen / "data")
        assert table.num_rows == cfg.problems.train_size
        assert set(table["teacher"].to_pylist()) == {label}
        assert len(set(table["problem_id"].to_pylist())) == table.num_rows
        for col in ("prompt", "completion", "n_tokens", "finish_reason"):
            assert col in table.column_names
        assert (gen / "spec.json").exists()
        cur = Path(first["stages"][f"curate.{label}"]["path"])
        assert pq.read_table(cur / "pool.parquet").num_rows == table.num_rows  # keep: all
        assert first["stages"][f"curate.{label}"]["stats"]["rows"] == table.num_rows


def test_second_run_does_no_new_generation(smoke_sweep) -> None:
    cfg, first, second = smoke_sweep
    assert all(not s["cached"] for s in first["stages"].values())
    assert all(s["cached"] for s in second["stages"].values())
    for name, stage in first["stages"].items():
        assert second["stages"][name]["path"] == stage["path"]
    assert second["mlflow"]["parent_run_id"] != first["mlflow"]["parent_run_id"]
    # one trial per student (test_sweep_failures.py checks that one of them failed)
    assert len(_children(cfg, second["mlflow"]["parent_run_id"],
                         second["mlflow"]["experiment"])) == 2


def test_report_from_the_smoke_sweep(smoke_sweep, tmp_path) -> None:
    from mixray.report.build import write_report
    from mixray.report.html import fmt

    cfg, first, _ = smoke_sweep
    index = write_report(cfg.experiment, cfg.tracking_uri, first["mlflow"]["parent_run_id"],
                         tmp_path / "report")
    html = index.read_text()
    for trial in first["trials"]:
        assert trial["trial"] in html
        assert fmt(trial["train_loss"]) in html  # the metrics are on the page as text
    pngs = list((tmp_path / "report").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)


def test_finished_trials_keep_only_their_student(smoke_sweep) -> None:
    """train.keep_checkpoints defaults to resume: a finished trial's Train run keeps the exported
    student (which loads) and its records, no DeepSpeed state; the summary gives the disk use."""
    from transformers import AutoModelForCausalLM

    from mixray.disk import tree_size
    from mixray.sweep.summary import format_summary

    cfg, first, _ = smoke_sweep
    for trial in first["trials"]:
        run = cfg.run_root_path / "train" / f"{first['invocation']}-{trial['trial']}"
        assert not [p for p in run.rglob("*.pt")], "optimizer or model states left"
        models = list(run.glob("checkpoint_*/model"))
        assert len(models) == 1 and list(run.glob("checkpoint_*/history.json"))
        assert AutoModelForCausalLM.from_pretrained(models[0]).num_parameters() > 0
    assert first["disk"]["bytes"] >= tree_size(cfg.run_root_path / "mlflow.db") > 0
    assert f"run root: {cfg.run_root_path} " in format_summary(cfg, first)
