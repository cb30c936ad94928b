"""Sweep-file validation: good files load, every kind of mistake names the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mixray.config import SweepFileError, load_sweep

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweeps_validate(path: Path) -> None:
    cfg = load_sweep(path)
    assert cfg.n_trials() >= 2
    assert cfg.mix.long_pool in cfg.teachers and cfg.mix.short_pool in cfg.teachers


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _smoke() -> dict:
    return yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "key", "expected"),
    [
        (lambda d: d["train"].update(zero_stag=2), "train.zero_stag", "unknown key"),
        (lambda d: d["train"].update(zero_stage=5), "train.zero_stage", "0, 1, 2 or 3"),
        (lambda d: d["train"].update(max_steps="many"), "train.max_steps", "integer"),
        (lambda d: d["search"].update(long_share=[0.2, 1.5]), "search.long_share", "[0, 1]"),
        (lambda d: d["teachers"]["long"].update(style="medium"), "teachers.long.style", "'long'"),
        (lambda d: d["teachers"]["long"].update(prompt="no field"), "teachers.long.prompt", "{problem}"),
        (lambda d: d["problems"]["source"].update(task="no_such_task"), "problems.source",
         "unknown reasoning-gym"),
        (lambda d: d.pop("students"), "students", "missing"),
        (lambda d: d["mix"].update(long_pool="huge") if "mix" in d else d.update(mix={"long_pool": "huge"}),
         "mix.long_pool", "not a teacher label"),
        (lambda d: d["evaluate"].update(engine={"kind": "http", "base_url": "http://x:8000/v1",
                                                "model": "m"}),
         "evaluate", "a sweep evaluates the students it trains"),
        (lambda d: d["train"].update(eval_every=2), "train.eval_every",
         "set mix.validation_problems"),
        (lambda d: d["search"].update(scheduler={"kind": "asha", "metric": "val_loss/long"}),
         "search.scheduler.metric", "set mix.validation_problems"),
    ],
)
def test_mistakes_name_file_key_and_expectation(tmp_path, edit, key, expected) -> None:
    data = _smoke()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(SweepFileError) as err:
        load_sweep(path)
    message = str(err.value)
    assert str(path) in message
    assert key in message or key.split(".")[0] in message
    assert expected in message


def test_override_sets_nested_values_with_yaml_types() -> None:
    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml",
                     ["train.max_steps=7", "search.long_share=[0.1, 0.3, 0.9]", "name=other"])
    assert cfg.train.max_steps == 7
    assert cfg.search.long_share == [0.1, 0.3, 0.9]
    assert cfg.name == "other" and cfg.experiment == "other"
    assert len(cfg.trials()) == 3


def test_override_of_unknown_key_is_refused() -> None:
    with pytest.raises(SweepFileError, match="bogus"):
        load_sweep(REPO / "sweeps" / "smoke.yaml", ["bogus.key=1"])


def test_concurrency_follows_declared_resources() -> None:
    from mixray.sweep.resources import cpus_per_trial, max_concurrent_trials

    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", ["search.long_share=[0, 0.25, 0.5, 1]"])
    assert cpus_per_trial(cfg) == pytest.approx(0.99)
    assert max_concurrent_trials(cfg, 2.0) == 2
    assert max_concurrent_trials(cfg, 1.0) == 1
    assert max_concurrent_trials(cfg, 64.0) == 4  # never more than there are trials


def test_work_the_cluster_can_never_place_is_refused_by_name() -> None:
    from mixray.sweep.plan import check_resources

    cfg = load_sweep(REPO / "sweeps" / "smoke.yaml", ["teachers.long.engine={kind: vllm}"])
    check_resources(load_sweep(REPO / "sweeps" / "smoke.yaml"), {"CPU": 2.0})  # fits
    with pytest.raises(ValueError, match=r"teacher 'long' \(teachers.long.gpus_per_replica\) "
                       r"needs 1 GPUs but the Ray cluster has 0"):
        check_resources(cfg, {"CPU": 2.0})  # a vllm replica asks for a GPU unless told 0
    with pytest.raises(ValueError, match="one trial .* needs 2.99 CPUs but the Ray cluster has 2"):
        check_resources(load_sweep(REPO / "sweeps" / "smoke.yaml",
                                   ["resources.cpus_per_train_worker=1.49"]), {"CPU": 2.0})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixray.sweep", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_key_exits_2_with_one_paragraph_and_no_traceback() -> None:
    proc = _cli("sweeps/smoke.yaml", "--set", "bogus.key=1")
    assert proc.returncode == 2
    assert "bogus" in proc.stderr and "sweeps/smoke.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_refuses_an_earlier_flat_problems_form_naming_the_new_key(tmp_path: Path) -> None:
    """problems.task / task_args moved under problems.source: an old file stops before any work
    (exit 2, like every schema error) and says where the key went."""
    data = _smoke()
    data["problems"] = {k: v for k, v in data["problems"].items() if k != "source"} | {
        "task": "basic_arithmetic", "task_args": {"max_terms": 2}}
    proc = _cli(str(_write(tmp_path, data)), "--dry-run")
    assert proc.returncode == 2
    moved = "problems.task: moved to problems.source: {kind: reasoning_gym, task: ...}"
    assert moved in proc.stderr
    assert "problems.task_args: moved to problems.source" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "sweep " not in proc.stdout


def test_cli_dry_run_prints_the_plan() -> None:
    proc = _cli("sweeps/laptop.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for word in ("problems", "teacher", "'long'", "'short'", "trials   : 2", "DeepSpeed ZeRO-2",
                 "GPU per trial"):
        assert word in proc.stdout


def test_readme_sweep_example_is_valid(tmp_path: Path) -> None:
    """The sweep-file example in the README validates against the schema (docs that cannot rot)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = _smoke()
    for section, values in yaml.safe_load(block).items():
        data.setdefault(section, {}).update(values)
    cfg = load_sweep(_write(tmp_path, data))
    assert cfg.mix.pools == {"long": 0.2, "short": 0.8}
    assert cfg.train.global_batch == 8 and cfg.search.long_share == [0.0, 0.2, 1.0]
