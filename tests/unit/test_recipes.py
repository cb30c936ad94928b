"""The recipes in sweeps/: each passes `--dry-run`, and the paper's say what PAPER.md says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mixray.config import load_sweep
from mixray.evaluate.judge import JUDGE_PROMPT
from mixray.generate.config import PAPER_PROMPT, VLLMEngineConfig
from mixray.sweep.__main__ import main

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


PAPER_RECIPES = ["paper-long-short", "paper-large-small", "paper-mix", "paper-7b-8b", "paper-lora"]
# PAPER.md, "Teachers and students": every student; 14B and above trained with LoRA.
PAPER_STUDENTS = [f"Qwen/Qwen2.5-{size}-Instruct" for size in ("0.5B", "1.5B", "3B", "7B", "14B",
                                                                "32B")] + [
    "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"]
LORA_STUDENTS = {"Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct",
                 "meta-llama/Llama-3.3-70B-Instruct"}
# (lr, warmup, global batch, LoRA) per recipe (PAPER.md, "Training"; none given for LoRA: 8)
RECIPE_TRAINING = {"paper-long-short": (1e-5, 0.0, 16, False),
                   "paper-large-small": (1e-5, 0.0, 16, False), "paper-mix": (1e-5, 0.0, 16, False),
                   "paper-7b-8b": (1e-5, 0.0, 8, False), "paper-lora": (1e-4, 0.1, 8, True)}


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_use_the_papers_training_and_evaluation(name: str) -> None:
    cfg, trials = _trial_configs(name)
    t = cfg.train
    assert (t.lr_schedule, t.epochs, t.dtype, t.zero_stage, t.seed) == ("cosine", 2, "bf16", 3, 42)
    assert (t.lr, t.warmup_ratio, t.global_batch, t.lora is not None) == RECIPE_TRAINING[name]
    assert t.system_prompt == "You are a helpful assistant."
    assert t.max_length == 8192 and t.overlong == "truncate"  # the recipes' overlong policy
    assert [b.name for b in cfg.evaluate.benchmarks] == PAPER_BENCHMARKS
    assert cfg.curate.keep == "correct"
    assert cfg.problems.source.path == "hf:DigitalLearningGmbH/MATH-lighteval"
    assert all(trial.mix.per_problem for trial in trials)  # the same problems in every trial
    # the paper's prompting: its user turn, no system turn of ours (tests/unit/test_recipe_prompts)
    assert all(te.prompt == PAPER_PROMPT and te.system_turn is None for te in cfg.teachers.values())


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_paper_recipes_evaluate_and_judge_on_vllm_as_the_paper(name: str) -> None:
    ev = load_sweep(REPO / "sweeps" / f"{name}.yaml").evaluate
    assert ev.sampling.temperature == 0.0 and ev.sampling.n == 1
    assert ev.sampling.max_new_tokens == 16000
    assert isinstance(ev.engine, VLLMEngineConfig) and ev.engine.dtype == "bfloat16"
    assert ev.engine.max_model_len >= 16000 + 1024  # room for the prompt too
    judge = ev.judge
    assert judge is not None and judge.model == "Qwen/Qwen2.5-32B-Instruct"
    assert isinstance(judge.engine, VLLMEngineConfig) and judge.engine.tensor_parallel_size == 2
    assert judge.gpus == 2 and judge.sampling.temperature == 0.0
    assert judge.prompt == JUDGE_PROMPT and judge.system_prompt is None


def test_every_paper_student_is_in_one_table_1_and_2_recipe() -> None:
    """Tables 1 and 2: each student trained on each teacher's CoT alone, in one recipe, the
    LoRA ones (and only they) in paper-lora."""
    where: dict[str, str] = {}
    for name in ("paper-long-short", "paper-large-small", "paper-7b-8b", "paper-lora"):
        cfg, trials = _trial_configs(name)
        pools = {"paper-long-short": ("long", "short"),
                 "paper-large-small": ("large", "small")}.get(name, ("long", "short", "large",
                                                                     "small"))
        sources = {(tc.students[0], next(p for p, w in tc.mix.pools.items() if w))
                   for tc in trials}
        assert sources == {(s, p) for s in cfg.students for p in pools}
        assert len(trials) == len(cfg.students) * len(pools)
        for s in cfg.students:
            where.setdefault(s, name)
            assert where[s] == name or {where[s], name} == {"paper-long-short",
                                                            "paper-large-small"}
    assert sorted(where) == sorted(PAPER_STUDENTS)
    assert {s for s, name in where.items() if name == "paper-lora"} == LORA_STUDENTS
    assert {s for s, name in where.items() if name == "paper-7b-8b"} == {
        "Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"}


def test_table_3_has_the_six_mixes_for_both_3b_students() -> None:
    cfg, trials = _trial_configs("paper-mix")
    assert cfg.students == ["Qwen/Qwen2.5-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct"]
    mixes = sorted({tuple(sorted((p, w) for p, w in tc.mix.pools.items() if w)) for tc in trials})
    assert mixes == sorted(SIX_MIXES)
    assert len(trials) == 12
    mix_large = next(tc for tc in trials if tc.mix.pools.get("large") == 0.2)
    assert mix_large.mix.long_share == pytest.approx(0.2)  # the "long" pool of this mix is large


SIX_MIXES = [(("long", 1.0),), (("short", 1.0),), (("large", 1.0),), (("small", 1.0),),
             (("long", 0.2), ("short", 0.8)), (("large", 0.2), ("small", 0.8))]


def test_the_batch_size_axis_of_paper_mix_crosses_every_mix_with_both_recipes(
        tmp_path: Path, capsys) -> None:
    """The commented search axis in paper-mix.yaml (the paper's batch-size confound), once
    uncommented, is a valid sweep: every mix under 16 x 8192 and 80 x 4096 with packing."""
    lines = (REPO / "sweeps" / "paper-mix.yaml").read_text().splitlines()
    start = lines.index("    # train:")
    assert all(line.startswith("    # ") for line in lines[start:])  # the file's last lines
    path = tmp_path / "paper-mix-batch-axis.yaml"
    path.write_text("\n".join(lines[:start] + [re.sub(r"^    # ", "    ", line)
                                                for line in lines[start:]]) + "\n")
    assert main([str(path), "--dry-run"]) == 0
    assert "trials   : 24 " in capsys.readouterr().out
    cfg = load_sweep(path)
    recipes = {}
    for t in cfg.trials():
        tc = cfg.for_trial(t.student, t.params)
        mix = tuple(sorted((p, w) for p, w in tc.mix.pools.items() if w))
        recipes.setdefault(mix, set()).add(
            (tc.train.global_batch, tc.train.max_length, tc.train.packing, tc.train.lr))
    assert sorted(recipes) == sorted(SIX_MIXES)
    assert all(r == {(16, 8192, "none", 1e-5), (80, 4096, "greedy", 1e-5)}
               for r in recipes.values())


def test_search_mix_is_optuna_over_share_and_schedule_with_asha() -> None:
    cfg = load_sweep(REPO / "sweeps" / "search-mix.yaml")
    s = cfg.search
    assert s.algorithm == "optuna" and s.scheduler.kind == "asha"
    assert s.space["mix.long_share"].uniform == (0.0, 1.0)
    kinds = {choice["kind"] for choice in s.space["mix.schedule"].choice}
    assert {"constant", "ramp"} <= kinds
