"""The recipes in sweeps/: each passes `--dry-run`, and the paper's say what PAPER.md says."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixray.config import load_sweep
from mixray.sweep import main

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "sweeps").glob("*.yaml"))
PAPER_BENCHMARKS = ["math500", "gsm8k", "amc2023", "aime2024", "olympiadbench"]


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_passes_dry_run(path: Path, capsys) -> None:
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in ("problems :", "teacher  :", "trials   :", "train    :", "evaluate :"):
        assert line in out


def _trial_configs(name: str):
    cfg = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    return cfg, [cfg.for_trial(t.student, t.params) for t in cfg.trials()]


@pytest.mark.parametrize("name", ["paper-long-short", "paper-large-small", "paper-mix"])
def test_paper_recipes_use_the_papers_training_and_evaluation(name: str) -> None:
    cfg, trials = _trial_configs(name)
    t = cfg.train
    assert (t.lr, t.lr_schedule, t.warmup_ratio, t.epochs, t.dtype, t.zero_stage, t.seed) == (
        1e-5, "cosine", 0.0, 2, "bf16", 3, 42)
    assert t.global_batch == 16 and t.system_prompt == "You are a helpful assistant."
    assert [b.name for b in cfg.evaluate.benchmarks] == PAPER_BENCHMARKS
    assert cfg.evaluate.sampling.temperature == 0.0 and cfg.curate.keep == "correct"
    assert cfg.problems.source.path == "hf:DigitalLearningGmbH/MATH-lighteval"
    assert all(trial.mix.per_problem for trial in trials)  # the same problems in every trial


def test_tables_1_and_2_are_single_sources_per_student() -> None:
    for name, pools in (("paper-long-short", ("long", "short")),
                        ("paper-large-small", ("large", "small"))):
        cfg, trials = _trial_configs(name)
        assert len(cfg.students) == 7 and len(trials) == 14
        sources = {(tc.students[0], next(p for p, w in tc.mix.pools.items() if w))
                   for tc in trials}
        assert sources == {(s, p) for s in cfg.students for p in pools}


def test_table_3_has_the_six_mixes_for_both_3b_students() -> None:
    cfg, trials = _trial_configs("paper-mix")
    assert cfg.students == ["Qwen/Qwen2.5-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct"]
    mixes = sorted({tuple(sorted((p, w) for p, w in tc.mix.pools.items() if w)) for tc in trials})
    assert mixes == sorted([(("long", 1.0),), (("short", 1.0),), (("large", 1.0),), (("small", 1.0),),
                            (("long", 0.2), ("short", 0.8)), (("large", 0.2), ("small", 0.8))])
    assert len(trials) == 12
    mix_large = next(tc for tc in trials if tc.mix.pools.get("large") == 0.2)
    assert mix_large.mix.long_share == pytest.approx(0.2)  # the "long" pool of this mix is large


def test_search_mix_is_optuna_over_share_and_schedule_with_asha() -> None:
    cfg = load_sweep(REPO / "sweeps" / "search-mix.yaml")
    s = cfg.search
    assert s.algorithm == "optuna" and s.scheduler.kind == "asha"
    assert s.space["mix.long_share"].uniform == (0.0, 1.0)
    kinds = {choice["kind"] for choice in s.space["mix.schedule"].choice}
    assert {"constant", "ramp"} <= kinds
