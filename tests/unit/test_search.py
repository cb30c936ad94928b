"""The search section: which trials a sweep file expands to, and the mistakes refused before work."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mixray.config import SweepFileError, load_sweep

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "sweeps" / "smoke.yaml"


def _load(*overrides: str):
    return load_sweep(SMOKE, list(overrides))


def test_grid_crosses_students_and_every_axis_with_stable_unique_names() -> None:
    cfg = _load("students=[tiny-random, /models/other]",
                "search.space={train.lr: {grid: [1.0e-4, 1.0e-3]}, mix.schedule.kind: "
                "{grid: [constant, length_order]}}")
    trials = cfg.trials()
    assert len(trials) == 2 * 2 * 2 * 2  # students x long_share x lr x schedule kind
    assert len({t.name for t in trials}) == len(trials)
    assert trials[0].name == "tiny-random-long0-lr=0.0001-kind=constant"
    assert {t.student for t in trials} == {"tiny-random", "/models/other"}
    assert _load("students=[tiny-random, /models/other]",
                 "search.space={train.lr: {grid: [1.0e-4, 1.0e-3]}, mix.schedule.kind: "
                 "{grid: [constant, length_order]}}").trials() == trials


def test_long_share_shorthand_is_the_same_axis_as_the_space_form() -> None:
    short = _load("search.long_share=[0, 0.5]")
    long = _load("search.long_share=null", "search.space={mix.long_share: {grid: [0, 0.5]}}")
    assert [t.name for t in short.trials()] == [t.name for t in long.trials()]


def test_a_trial_config_carries_its_values() -> None:
    cfg = _load("search.space={train.lr: {grid: [0.003]}, mix.schedule: {grid: [{kind: ramp, "
                "start: {long: 0, short: 1}, end: {long: 1, short: 0}}]}}")
    trial = cfg.trials()[1]
    tcfg = cfg.for_trial(trial.student, trial.params)
    assert tcfg.train.lr == 0.003 and tcfg.mix.schedule.kind == "ramp"
    assert tcfg.mix.long_share == pytest.approx(trial.params["mix.long_share"])
    assert tcfg.mix.schedule.end == {"long": 1.0, "short": 0.0}
    assert cfg.train.lr != 0.003  # the sweep's own config is untouched


def test_random_draws_are_seeded_in_range_and_shared_by_students() -> None:
    space = ("search.space={train.lr: {loguniform: [1.0e-5, 1.0e-3]}, "
             "train.warmup_ratio: {uniform: [0, 0.2]}, train.packing: {choice: [none, greedy]}}")
    args = ["search.algorithm=random", "search.num_samples=5", "search.long_share=null",
            "students=[tiny-random, /m/b]", space]
    a, b = _load(*args), _load(*args)
    assert a.trials() == b.trials()
    assert a.trials() != _load(*args, "search.seed=1").trials()
    trials = a.trials()
    assert len(trials) == 10 and a.n_trials() == 10
    for t in trials:
        p = t.params
        assert 1e-5 <= p["train.lr"] <= 1e-3 and 0 <= p["train.warmup_ratio"] <= 0.2
        assert p["train.packing"] in ("none", "greedy")
    by_student = [[t.params for t in trials if t.student == s] for s in ("tiny-random", "/m/b")]
    assert by_student[0] == by_student[1]
    logs = [math.log10(t.params["train.lr"]) for t in trials]
    assert max(logs) - min(logs) > 0.3  # spread in log space, not all at one end


def test_optuna_trials_are_counted_not_listed() -> None:
    cfg = _load("search.algorithm=optuna", "search.num_samples=6", "search.long_share=null",
                "search.space={mix.long_share: {uniform: [0, 1]}, mix.schedule.kind: "
                "{choice: [constant, length_order]}}", "search.scheduler={kind: asha}")
    assert cfg.n_trials() == 6
    assert cfg.search.scheduler.kind == "asha" and cfg.search.scheduler.metric == "train_loss"


def test_asha_rung_steps_are_the_first_whole_steps_at_each_rung() -> None:
    from mixray.search import AshaScheduler

    assert AshaScheduler(kind="asha").rung_steps(up_to=20) == [1, 2, 4, 8, 16]
    # milestones 3, 4.5, 6.75, 10.125: ASHA judges a trial at the first step at or past each
    assert AshaScheduler(kind="asha", grace_period=3, reduction_factor=1.5).rung_steps(
        up_to=11) == [3, 5, 7, 11]


@pytest.mark.parametrize("overrides, words", [
    (["search.space={teachers.long.model: {grid: [x]}}"], ["teachers.long.model", "mix., train."]),
    (["search.space={train.num_workers: {grid: [1, 2]}}"], ["train.num_workers", "placement"]),
    (["search.space={train.lrr: {grid: [0.1]}}"], ["train.lrr", "Extra inputs"]),
    (["search.space={train.lr: {grid: [-1]}}"], ["train.lr", "greater than 0"]),
    (["search.space={train.lr: {uniform: [0.1]}}"], ["search.space.train.lr.uniform"]),
    (["search.space={train.lr: {uniform: [0.1, 0.2], grid: [0.1]}}"], ["exactly one of"]),
    (["search.space={train.lr: {loguniform: [0, 0.1]}}"], ["0 < low"]),
    (["search.space={train.lr: {uniform: [0.1, 0.2]}}"], ["algorithm grid", "['train.lr']"]),
    (["search.algorithm=random"], ["at least one drawn axis"]),
    (["search.algorithm=optuna"], ["optuna", "grid axes: ['mix.long_share']"]),
    (["search.long_share=null", "search.algorithm=optuna"], ["the space is empty"]),
    (["search.space={mix.long_share: {grid: [0.3]}}"], ["not both"]),
    (["search.long_share=null", "search.space={mix.long_share: {grid: [0.3, 2]}}"], ["[0, 1]"]),
    (["search.num_samples=3"], ["num_samples must be 1"]),
    (["search.scheduler={kind: asha, reduction_factor: 1}"], ["reduction_factor"]),
    (["search.scheduler={kind: hyperband}"], ["search.scheduler"]),
])
def test_search_mistakes_name_the_key(overrides: list[str], words: list[str]) -> None:
    with pytest.raises(SweepFileError) as err:
        _load(*overrides)
    message = str(err.value)
    assert str(SMOKE) in message
    for word in words:
        assert word in message, message


def test_ramp_end_points_are_searchable() -> None:
    cfg = _load("search.long_share=null", "search.algorithm=random", "search.num_samples=3",
                "mix.schedule={kind: ramp, start: {long: 0, short: 1}, end: {long: 1, short: 0}}",
                "search.space={mix.schedule.end.long: {uniform: [0.2, 1.0]}}")
    ends = [cfg.for_trial(t.student, t.params).mix.schedule.end["long"]
            for t in cfg.trials()]
    assert len(set(ends)) == 3 and all(0.2 <= e <= 1.0 for e in ends)


def test_optuna_proposals_decode_to_trials_and_resume_tells_the_finished_ones() -> None:
    from mixray.sweep.tune import _optuna_search, optuna_trial
    from mixray.tracking import Finished

    schedules = [{"kind": "constant"}, {"kind": "length_order"}]
    cfg = _load("search.algorithm=optuna", "search.num_samples=4", "search.long_share=null",
                "search.space={mix.long_share: {uniform: [0, 1]}, "
                "mix.schedule: {choice: [{kind: constant}, {kind: length_order}]}}")
    trial = optuna_trial(cfg, "tiny-random", {"p0": 0.25, "p1": 1}, "abc_00001")
    assert trial.params == {"mix.long_share": 0.25, "mix.schedule": schedules[1]}
    assert trial.name.startswith("tiny-random-long0.25-schedule=length_order-")
    assert trial.name.endswith("abc_00001")
    tcfg = cfg.for_trial(trial.student, trial.params)
    assert tcfg.mix.schedule.kind == "length_order" and tcfg.mix.long_share == 0.25

    finished = [Finished("tiny-random", trial.params, {"eval_accuracy": 0.5}),
                Finished("tiny-random", trial.params, {"eval_accuracy": None})]
    search = _optuna_search(cfg, finished)
    assert search._points_to_evaluate == [{"p0": 0.25, "p1": 1}]  # the scored one only
    assert search._evaluated_rewards == [0.5]


def test_a_whole_section_varies_keys_that_belong_together() -> None:
    cfg = load_sweep(SMOKE, [
        "teachers.large={model: tiny-random, style: short}", "search.long_share=null", "mix.seed=7",
        "search.space={mix: {grid: [{pools: {long: 1, short: 0}}, "
        "{pools: {large: 1, short: 0}, long_pool: large}]}}"])
    first, second = (cfg.for_trial(t.student, t.params) for t in cfg.trials())
    assert first.mix.pools == {"long": 1.0, "short": 0.0} and first.mix.long_pool == "long"
    assert second.mix.long_pool == "large" and second.mix.long_share == 1.0
    assert cfg.mix.seed == 7 and first.mix.seed == 0  # a value replaces the section, defaults fill in


def test_a_resumed_optuna_study_does_not_propose_a_finished_point_again() -> None:
    """TPE's first points are random draws from its seed: a resumed study seeded like the first
    run re-proposed the very point it had just been told (found end to end: every trial of a
    resumed sweep ran at long_share 0.5488)."""
    from mixray.sweep import tune as mixray_tune
    from mixray.tracking import Finished

    cfg = load_sweep(SMOKE, ["search.algorithm=optuna", "search.num_samples=2",
                             "search.long_share=null",
                             "search.space={mix.long_share: {uniform: [0.0, 1.0]}}"])
    space = {"p0": mixray_tune._tune_domain(cfg.search.space["mix.long_share"])}

    def first_proposal(finished):
        search = mixray_tune._optuna_search(cfg, finished)
        search.set_search_properties(cfg.search.metric, cfg.search.mode, space)  # as Tune does
        return search.suggest("t0")

    point = first_proposal([])  # what the interrupted run's first trial ran
    told = Finished("tiny-random", {"mix.long_share": point["p0"]}, {"eval_accuracy": 0.0})
    assert first_proposal([told]) != point
