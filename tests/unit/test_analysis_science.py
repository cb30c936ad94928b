"""The science of a sweep's results, on plain records: seeds averaged into points with their two
errors apart, "best" by search.metric/mode, paired gaps and gains over the base model, and the
power statement; and the search.seeds axis that makes the repeats."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mixray.config import load_sweep
from mixray.science.analysis import Baseline, Trial, analyse, curve_points, power_line
from mixray.science.config import AnalysisConfig
from mixray.science.significance import Scores, detectable_difference, paired_difference
from mixray.sweep.plan import plan
from mixray.sweep.summary import format_summary

SMOKE = Path(__file__).parents[2] / "sweeps" / "smoke.yaml"
N = 200
FAST = AnalysisConfig(resamples=500)


def _scores(p: float, seed: int, like: np.ndarray | None = None, flip: float = 0.0) -> Scores:
    """N problems right with probability p; ``like`` given: a copy with a share ``flip`` of its
    answers redrawn (a model close to the other)."""
    rng = np.random.default_rng(seed)
    right = rng.random(N) < p
    if like is not None:
        redraw = rng.random(N) < flip
        right = np.where(redraw, right, like)
    return Scores({"heldout": tuple(float(x) for x in right)})


def _trial(name: str, share: float, scores: Scores | None = None, seed: int | None = None,
           point: str = "", value: float | None = None, accuracy: float | None = None,
           status: str = "FINISHED") -> Trial:
    acc = accuracy if accuracy is not None else scores.accuracy() if scores else 0.5
    return Trial(run_id=name, name=name, status=status, student="s", share=share,
                 pools=("long", "short"), schedule="constant", accuracy=acc, stderr=0.03,
                 train_loss=1.0, loss_curve=(), benchmarks={}, data_card=None, error=None,
                 seed=seed, point=point, value=value, scores=scores)


def test_seeds_average_into_one_point_with_both_errors() -> None:
    trials = [_trial("a0", 0.5, seed=0, accuracy=0.40), _trial("a1", 0.5, seed=1, accuracy=0.50),
              _trial("b", 0.5, point="lr=0.001", accuracy=0.9)]
    one, other = sorted(curve_points(trials), key=lambda p: p.point)
    assert (one.n, one.point, other.n, other.point) == (2, "", 1, "lr=0.001")
    assert math.isclose(one.accuracy, 0.45)
    assert math.isclose(one.seed_stderr, 0.05)  # |0.5 - 0.4| / 2: sd over sqrt(2)
    assert math.isclose(one.sampling_stderr, 0.03)
    assert math.isclose(one.stderr, math.hypot(0.05, 0.03))
    assert other.seed_stderr is None and math.isclose(other.stderr, 0.03)


def test_best_follows_the_search_metric_and_mode() -> None:
    """val_loss, min: the mix with the lowest loss is best even when another scores higher."""
    trials = [_trial("s0", 0.0, value=1.0, accuracy=0.3), _trial("s1", 1.0, value=2.0,
                                                                 accuracy=0.6),
              _trial("m2", 0.2, value=0.5, accuracy=0.4), _trial("m5", 0.5, value=0.9,
                                                                 accuracy=0.7)]
    (row,) = analyse(trials, {}, 1, metric="val_loss", mode="min", cfg=FAST).gaps
    assert row.best_mix.share == 0.2 and math.isclose(row.best_single, 0.3)  # s0: lower loss
    (row,) = analyse(trials, {}, 1, metric="eval_accuracy", mode="max", cfg=FAST).gaps
    assert row.best_mix.share == 0.5 and math.isclose(row.best_single, 0.6)


def test_gaps_and_gains_are_paired_on_the_problems() -> None:
    base = _scores(0.3, 1)
    short = [_scores(0.5, 10 + s) for s in range(2)]
    long_ = [_scores(0.8, 20 + s) for s in range(2)]
    mix = [_scores(0.5, 30 + s, like=np.array(short[s].benchmarks["heldout"]) > 0.5, flip=0.1)
           for s in range(2)]
    trials = ([_trial(f"short{s}", 0.0, short[s], seed=s) for s in range(2)]
              + [_trial(f"long{s}", 1.0, long_[s], seed=s) for s in range(2)]
              + [_trial(f"mix{s}", 0.2, mix[s], seed=s) for s in range(2)])
    found = analyse(trials, {"s": Baseline("s", base.accuracy(), 0.03, base)}, 1, cfg=FAST)
    (row,) = found.gaps
    expect = paired_difference(long_, short, resamples=500, seed=0, level=0.95)
    assert row.gap_test == expect and math.isclose(row.gap, expect.difference)
    assert row.gap_test.significant  # 0.8 against 0.5 on 200 problems
    assert row.mix_test.seeds == (2, 2) and row.mix_test.n_problems == N
    gains = {g.point.share: g for g in found.gains}
    assert set(gains) == {0.0, 0.2, 1.0} and gains[1.0].test.significant
    assert math.isclose(gains[1.0].gain, gains[1.0].point.accuracy - base.accuracy())
    # power from the observed paired errors: the median of the two comparisons'
    errors = sorted([row.gap_test.stderr, row.mix_test.stderr])
    assert math.isclose(found.power.detectable,
                        detectable_difference(N, 0.5, stderr=sum(errors) / 2))
    assert "observed paired error of 2 comparison(s)" in power_line(found.power)


def test_without_scores_no_interval_is_made_up_and_power_falls_back_to_the_bound() -> None:
    trials = [_trial("a", 0.0, accuracy=0.0), _trial("b", 1.0, accuracy=0.0)]
    found = analyse(trials, {}, 1, cfg=FAST)
    assert found.gaps[0].gap_test is None and found.power is None
    same = _scores(0.0, 1)  # a random student: every answer wrong, no variance to go by
    found = analyse([_trial("a", 0.0, same), _trial("b", 1.0, same)], {}, 3, cfg=FAST)
    assert found.gaps[0].gap_test.difference == 0 and not found.gaps[0].gap_test.significant
    assert math.isclose(found.power.detectable, detectable_difference(N, 0.5))
    assert "no variance to go by" in found.power.basis and found.power.samples == 3


def test_seeds_repeat_every_point_and_set_every_seed() -> None:
    cfg = load_sweep(SMOKE, ["search.long_share=[0.0, 1.0]", "search.seeds=[3, 4]"])
    trials = cfg.trials()
    assert [t.params for t in trials] == [{"mix.long_share": s, "seed": seed}
                                          for s in (0.0, 1.0) for seed in (3, 4)]
    assert len({t.name for t in trials}) == 4 and trials[1].name.endswith("seed=4")
    one = cfg.for_trial(trials[1].student, trials[1].params)
    assert (one.train.seed, one.mix.seed, one.evaluate.sampling.seed) == (4, 4, 4)
    assert "x 2 seed(s)" in plan(cfg)


@pytest.mark.parametrize(("overrides", "message"), [
    (["search.seeds=[1, 1]"], "search.seeds must be distinct"),
    (["search.algorithm=optuna", "search.long_share=null",
      "search.space={mix.long_share: {uniform: [0, 1]}}", "search.seeds=[0, 1]"],
     "search.seeds repeats the points of grid and random search"),
])
def test_bad_seeds_are_refused_before_any_work(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_sweep(SMOKE, overrides)


def test_the_plan_states_what_the_evaluation_can_detect() -> None:
    cfg = load_sweep(SMOKE, ["problems.eval_size=100", "analysis.detect=0.1"])
    line = next(ln for ln in plan(cfg).splitlines() if ln.startswith("power"))
    assert f"{detectable_difference(100, 0.5):.3f}" in line
    assert "detecting 0.1 takes up to 393 problems" in line  # 2 (1.96 + 0.84)^2 / 4 / 0.01


def test_the_summary_shows_base_seeds_intervals_and_power() -> None:
    cfg = load_sweep(SMOKE, ["search.long_share=[0.0, 1.0]", "search.seeds=[0, 1]"])
    student = cfg.students[0]
    test = {"difference": 0.1, "low": 0.02, "high": 0.18, "p_value": 0.01, "stderr": 0.04,
            "n_problems": 8, "seeds": [2, 2], "level": 0.95, "significant": True}
    trial = {"trial": "t", "student": student, "params": {"mix.long_share": 1.0, "seed": 0},
             "long_share": 1.0, "resumed": False, "error": None, "stopped_early": False,
             "mix_rows": 4, "train_loss": 1.0, "eval_accuracy": 0.5, "value": 0.5,
             "eval_accuracy_stderr": 0.1}
    summary = {"trials": [trial], "stages": {}, "timings_s": {}, "summary_path": "-",
               "mlflow": {"parent_run_id": "p"}, "disk": {"run_root": "runs", "bytes": 0},
               "baselines": {student: {"accuracy": 0.25, "stderr": 0.05}},
               "points": [{"student": student, "share": 1.0, "point": "", "n": 2,
                           "accuracy": 0.5, "value": 0.5, "stderr": 0.1, "seed_stderr": 0.05,
                           "sampling_stderr": 0.08}],
               "gaps": [{"student": student, "pools": ["long", "short"], "name": "ΔLong",
                         "gap": 0.1, "best_mix_gain": None, "best_mix_share": None,
                         "gap_test": test, "best_mix_test": None}],
               "power": {"n_problems": 8, "samples": 1, "seeds": 2, "accuracy": 0.5,
                         "detectable": 0.3, "detect": 0.05, "needed": 900, "basis": "x"}}
    text = format_summary(cfg, summary)
    assert "base model (before fine-tuning): eval acc 0.250 ± 0.050" in text
    assert "mean over 2 seeds 0.500 ± 0.100 (seeds ± 0.050, evaluation ± 0.080)" in text
    assert "= +0.100 [+0.020, +0.180] *" in text
    assert "best by eval_accuracy (max): long share 1 (mean over 2 seeds), 0.5" in text
    assert "differences below 0.300" in text and "about 900 problems" in text


def test_trials_on_different_problems_get_no_pairing_and_no_crash() -> None:
    """A searched evaluate.* axis can give two points different benchmarks: nothing to pair."""
    other = Scores({"heldout": (1.0, 0.0)})
    found = analyse([_trial("a", 0.0, _scores(0.5, 1)), _trial("b", 1.0, other)], {}, 1,
                    cfg=FAST)
    assert found.gaps[0].gap is not None and found.gaps[0].gap_test is None
