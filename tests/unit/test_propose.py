"""Proposing the next mix: the share-curve fit on synthetic trial outcomes with a known optimum,
the next search grid, and the CLI on a hand-built sqlite MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mixray.config import load_sweep
from mixray.propose.__main__ import main
from mixray.science.analysis import Point
from mixray.science.proposal import (
    OBSERVED,
    QUADRATIC,
    Proposal,
    fit_share_curve,
    next_space,
    propose,
)

SHARES = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
SE = 0.02
SMOKE = Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml"


def peaked(optimum: float):
    return lambda s: 0.6 - 0.8 * (np.asarray(s) - optimum) ** 2


def noisy(curve, rng: np.random.Generator) -> np.ndarray:
    return curve(SHARES) + rng.normal(0.0, SE, len(SHARES))


@pytest.mark.parametrize(("curve", "optimum"), [
    (peaked(0.3), 0.3), (peaked(0.7), 0.7),
    (lambda s: 0.45 + 0.15 * np.asarray(s), 1.0),  # monotone: the optimum is the end s = 1
])
def test_known_optimum_found_and_inside_interval(curve, optimum: float) -> None:
    y = noisy(curve, np.random.default_rng(7))
    fit = fit_share_curve(SHARES, y, [SE] * len(SHARES))
    assert fit.method == QUADRATIC
    assert abs(fit.best_share - optimum) <= 0.1
    assert fit.low is not None and fit.high is not None
    assert 0.0 <= fit.low <= optimum <= fit.high <= 1.0
    assert fit.predicted == pytest.approx(float(curve(optimum)), abs=0.05)


def test_many_noisy_datasets_mostly_near_the_optimum() -> None:
    rng = np.random.default_rng(2024)
    near = covered = 0
    for i in range(50):
        optimum = rng.uniform(0.1, 0.9)
        fit = fit_share_curve(SHARES, noisy(peaked(optimum), rng), [SE] * len(SHARES), seed=i)
        near += abs(fit.best_share - optimum) <= 0.1
        covered += fit.low <= optimum <= fit.high
    assert near >= 45  # >= 90%
    assert covered >= 42  # a 95% interval: >= 85% of 50 leaves room for chance


def test_mode_min_finds_a_minimum() -> None:
    def curve(s):
        return 0.2 + 0.8 * (np.asarray(s) - 0.6) ** 2

    fit = fit_share_curve(SHARES, noisy(curve, np.random.default_rng(3)), [SE] * 6, mode="min")
    assert abs(fit.best_share - 0.6) <= 0.1
    assert fit.low <= 0.6 <= fit.high
    assert fit.predicted == pytest.approx(0.2, abs=0.03)
    assert fit_share_curve(SHARES, curve(SHARES), [SE] * 6, mode="max").best_share in (0.0, 1.0)


def test_two_shares_best_observed_without_interval() -> None:
    fit = fit_share_curve([0.0, 0.5, 0.5], [0.4, 0.52, 0.47], [0.02, math.nan, None])
    assert fit == (0.5, None, None, 0.52, OBSERVED)
    assert fit_share_curve([0.0, 0.5], [0.4, 0.52], [0.02, 0.02], mode="min").best_share == 0.0


def test_missing_stderr_gets_the_median_of_the_others() -> None:
    y = peaked(0.4)(SHARES) + np.array([0.01, -0.02, 0.0, 0.015, -0.01, 0.02])
    given = [0.01, 0.03, math.nan, 0.02, 0.0, None]  # median of the known ones: 0.02
    fit = fit_share_curve(SHARES, y, given)
    filled = fit_share_curve(SHARES, y, [0.01, 0.03, 0.02, 0.02, 0.02, 0.02])
    assert fit == filled
    assert all(math.isfinite(v) for v in fit[:4])
    assert fit_share_curve(SHARES, y, [None] * 6).best_share == pytest.approx(
        fit_share_curve(SHARES, y, [0.05] * 6).best_share)


def test_repeated_shares_and_seeded_interval() -> None:
    rng = np.random.default_rng(5)
    s = np.repeat(SHARES, 2)
    y = peaked(0.5)(s) + rng.normal(0.0, SE, len(s))
    first = fit_share_curve(s, y, [SE] * len(s), seed=1)
    assert abs(first.best_share - 0.5) <= 0.1 and first.low <= 0.5 <= first.high
    assert fit_share_curve(s, y, [SE] * len(s), seed=1) == first


def test_propose_groups_by_student_pools_schedule() -> None:
    curve = peaked(0.3)
    points = [Point(student, ("long", "short"), sched, float(s), float(curve(s)), SE, 1, ())
              for student in ("b", "a") for sched in ("ramp", None) for s in SHARES]
    points.append(Point("c", ("large", "small"), None, 0.2, 0.5, None, 1, ()))
    proposals = propose(points)
    assert [(p.student, p.schedule) for p in proposals] == [
        ("a", None), ("a", "ramp"), ("b", None), ("b", "ramp"), ("c", None)]
    assert all(abs(p.best_share - 0.3) < 0.02 and p.n_points == 6 for p in proposals[:4])
    assert proposals[4] == Proposal("c", ("large", "small"), None, 0.2, None, None, 0.5,
                                    OBSERVED, 1)


def _proposal(best: float, low: float | None, high: float | None) -> Proposal:
    method = QUADRATIC if low is not None else OBSERVED
    return Proposal("s", ("long", "short"), None, best, low, high, 0.6, method, 6)


@pytest.mark.parametrize("proposals", [
    [_proposal(0.33, 0.25, 0.41)], [_proposal(0.37, 0.02, 0.95)], [_proposal(1.0, 0.95, 1.0)],
    [_proposal(0.0, None, None)], [_proposal(0.3, 0.28, 0.31), _proposal(0.72, 0.5, 0.9)],
])
def test_next_space(proposals: list[Proposal]) -> None:
    grid = next_space(proposals)
    assert grid == sorted(set(grid)) and len(grid) >= 3
    assert all(0.0 <= v <= 1.0 and round(v, 2) == v for v in grid)
    for p in proposals:
        assert min(abs(v - p.best_share) for v in grid) <= 0.05
        near = [v for v in grid if abs(v - p.best_share) <= 0.2 + 1e-9]
        assert max(near) - min(near) >= 0.2 - 1e-9  # at least 0.2 wide, also at an end
    assert next_space([_proposal(1.0, 0.95, 1.0)]) == [0.8, 0.85, 0.9, 0.95, 1.0]


# ------------------------------------------------------------------------------ the CLI, end to end

OPTIMUM = 0.4


def _child(c: MlflowClient, exp: str, parent: str, share: float, status: str = "FINISHED") -> None:
    run = c.create_run(exp, run_name=f"tiny-random-long{share:g}",
                       tags={"mlflow.parentRunId": parent, "mixray.kind": "trial"})
    params = {"student": "tiny-random", "long_share": str(share), "mix.long_pool": "long",
              "mix.short_pool": "short", "schedule": "constant"}
    acc = float(peaked(OPTIMUM)(share))
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                metrics=[Metric("eval_accuracy", acc, 0, 0),
                         Metric("eval_accuracy_stderr", SE, 0, 0)])
    c.set_terminated(run.info.run_id, status)


def _parent(c: MlflowClient, exp: str, tmp: Path, config: dict | None) -> str:
    rid = c.create_run(exp, run_name="sweep", tags={"mixray.kind": "sweep"}).info.run_id
    if config is not None:
        path = tmp / rid / "config.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(config, default=str))
        c.log_artifact(rid, str(path))
    c.set_terminated(rid, "FINISHED")
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """'good': a smoke sweep's parent and six finished trials on a known curve (and a failed one
    that must not count); 'failed': only a failed trial; 'broken': a config.json that is no
    sweep; 'bare': no config.json."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    config = load_sweep(SMOKE, [f"run_root={tmp / 'runs'}"]).model_dump()
    for name, cfg in (("good", config), ("failed", config), ("broken", {"name": "broken"}),
                      ("bare", None)):
        exp = c.create_experiment(name, artifact_location=(tmp / "art" / name).as_uri())
        parent = _parent(c, exp, tmp, cfg)
        for share in {"good": SHARES, "failed": []}.get(name, [0.5]):
            _child(c, exp, parent, float(share))
        _child(c, exp, parent, 0.9, status="FAILED")
    return uri


def test_cli_prints_proposal_and_writes_next_sweep(store: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "next" / "smoke-next.yaml"
    assert main(["--experiment", "good", "--tracking-uri", store, "--write", str(out)]) == 0
    line, path = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("student tiny-random (long vs short, schedule constant): "
                           "best long share 0.40 [")
    assert "(weighted quadratic over 6 shares), predicted accuracy 0.600" in line
    assert Path(path) == out
    cfg = load_sweep(out)
    assert cfg.name == "smoke-next" and cfg.search.algorithm == "grid"
    grid = cfg.search.long_share
    assert grid == sorted(set(grid)) and min(grid) < OPTIMUM < max(grid) and OPTIMUM in grid
    assert cfg.teachers.keys() == {"long", "short"} and cfg.train.max_steps == 3


@pytest.mark.parametrize(("experiment", "message"), [
    ("failed", "no finished trials"), ("broken", "problem(s) in the sweep file"),
    ("bare", "has no config.json artifact"), ("missing", "experiment 'missing' not found")])
def test_cli_user_errors_exit_2(store: str, tmp_path: Path, experiment: str, message: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "next.yaml"
    with pytest.raises(SystemExit) as e:
        main(["--experiment", experiment, "--tracking-uri", store, "--write", str(out)])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # a file that would not run is never left


def test_cli_failed_write_keeps_the_file_it_would_replace(store: str, tmp_path: Path) -> None:
    out = tmp_path / "next.yaml"
    out.write_text("name: mine\n")
    with pytest.raises(SystemExit):
        main(["--experiment", "broken", "--tracking-uri", store, "--write", str(out)])
    assert out.read_text() == "name: mine\n"
