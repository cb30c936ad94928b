"""The paper recipes prompt as the paper did (PAPER.md, "Data" and "Evaluation"): each teacher's
first prompt, rendered through a chat template the way an engine renders it, is the paper's user
turn with the problem in, and no system turn of ours precedes it; the evaluation asks the same
(GSM8K: the raw question). No model hub here: the templates are written out below."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from mixray.config import load_sweep
from mixray.evaluate.benchmarks import REGISTRY, LoadedBenchmark
from mixray.evaluate.stage import _generation_inputs
from mixray.generate.config import STYLE_SYSTEM
from mixray.generate.job import Placement, messages, model_job
from mixray.models import CHATML_TEMPLATE

REPO = Path(__file__).resolve().parents[2]
PAPER_RECIPES = ["paper-long-short", "paper-large-small", "paper-mix", "paper-7b-8b", "paper-lora"]

# PAPER.md's teacher prompt as it reads there ("\n" being a line break), independent of
# mixray.generate.config.PAPER_PROMPT, which is a str.format template with its braces doubled.
PAPER_USER_TURN = ("Solve the following math problem. Present the final answer in the format: "
                   "Final Answer: \\boxed{your_answer}.\nProblem: {problem}\nAnswer:")
# Braces and a backslash in the problem: it is an argument of the template, never part of it.
PROBLEM = "Find $x$ if $\\frac{x}{2} = 3$ and {x} is an integer."

# The chat template of Qwen/Qwen2.5-*-Instruct (the "chat_template" of tokenizer_config.json on
# huggingface.co/Qwen/Qwen2.5-7B-Instruct), its branches for tools and tool calls left out (no
# tools here): with no system turn it writes its own default one. QwQ-32B-Preview's is the same
# with another default (huggingface.co/Qwen/QwQ-32B-Preview, tokenizer_config.json).
QWEN25_TEMPLATE = r"""{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nDEFAULT_SYSTEM<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
QWEN25_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWQ_DEFAULT = ("You are a helpful and harmless assistant. You are Qwen developed by Alibaba. "
               "You should think step-by-step.")
DEFAULT_SYSTEM = {"Qwen/QwQ-32B-Preview": QWQ_DEFAULT}  # every other paper teacher: Qwen2.5's


def _tokenizer(template: str) -> PreTrainedTokenizerFast:
    """A tokenizer built in code with `template` as its chat template: rendering goes through
    transformers' own `apply_chat_template`, as the hf engine's does."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>")
    tok.chat_template = template
    return tok


def _render(template: str, chat: list[dict[str, str]]) -> str:
    return _tokenizer(template).apply_chat_template(chat, tokenize=False,
                                                    add_generation_prompt=True)


def _qwen(model: str) -> str:
    return QWEN25_TEMPLATE.replace("DEFAULT_SYSTEM", DEFAULT_SYSTEM.get(model, QWEN25_DEFAULT))


def _chatml(system: str | None, user: str) -> str:
    turns = ([("system", system)] if system is not None else []) + [("user", user)]
    return "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in turns) + "<|im_start|>assistant\n"


def _teacher_chat(name: str, label: str) -> list[dict[str, str]]:
    """The chat a teacher's engine actor renders for PROBLEM: the sweep's teacher, through
    its generation job (`model_job`), into `messages`, as `_EngineActor` does."""
    cfg = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    teacher = cfg.teachers[label]
    job = model_job(teacher, label, Path("/nonexistent-model"), teacher.prompt,
                    teacher.system_turn, Placement())
    return messages(job.system, job.prompt, PROBLEM)


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_each_teachers_first_prompt_is_the_papers_user_turn(name: str) -> None:
    cfg = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    paper_turn = PAPER_USER_TURN.replace("{problem}", PROBLEM)
    for label, teacher in cfg.teachers.items():
        chat = _teacher_chat(name, label)
        assert chat == [{"role": "user", "content": paper_turn}], (name, label)
        # Inside the teacher's own template: its default system turn, never one of ours.
        rendered = _render(_qwen(teacher.model), chat)
        assert rendered == _chatml(DEFAULT_SYSTEM.get(teacher.model, QWEN25_DEFAULT), paper_turn)
        assert rendered.count("<|im_start|>system") == 1
        assert not any(text in rendered for text in STYLE_SYSTEM.values())
        # A template without a default of its own (tiny-random's ChatML): no system turn at all.
        assert _render(CHATML_TEMPLATE, chat) == _chatml(None, paper_turn)


def test_a_style_preset_is_a_system_turn_before_the_same_user_turn() -> None:
    """The laptop recipes keep their presets: the style's text is the system turn."""
    cfg = load_sweep(REPO / "sweeps" / "laptop.yaml")
    for label in ("long", "short"):
        chat = _teacher_chat("laptop", label)
        assert chat[0] == {"role": "system", "content": STYLE_SYSTEM[label]}
        assert chat[1]["content"] == PAPER_USER_TURN.replace("{problem}", PROBLEM)
        assert cfg.teachers[label].system_label == f"{label} style"
        rendered = _render(_qwen("Qwen/Qwen2.5-3B-Instruct"), chat)
        assert rendered == _chatml(STYLE_SYSTEM[label], chat[1]["content"])  # replaces Qwen's


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_the_evaluation_asks_what_the_teachers_were_asked(name: str) -> None:
    """Same prompt as the teachers, GSM8K the raw question, inside the student's template with
    the system prompt it was trained with (PAPER.md, "Training": "You are a helpful assistant.")."""
    cfg = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    loaded = [LoadedBenchmark(b.name, [{"problem_id": "0", "problem": PROBLEM, "answer": "6"}],
                              answer_format=REGISTRY[b.name].answer_format,
                              prompt=REGISTRY[b.name].prompt) for b in cfg.evaluate.benchmarks]
    rows = _generation_inputs(loaded, cfg.evaluate)
    user_turns = {r["benchmark"]: r["prompt"] for r in rows}
    paper_turn = PAPER_USER_TURN.replace("{problem}", PROBLEM)
    assert user_turns == {b: PROBLEM if b == "gsm8k" else paper_turn for b in user_turns}
    assert set(user_turns) == {"math500", "gsm8k", "amc2023", "aime2024", "olympiadbench"}
    system = cfg.train.system_prompt
    assert system == "You are a helpful assistant."
    job = model_job(cfg.evaluate, "eval", Path("/nonexistent-model"), "{problem}", system,
                    Placement())  # as evaluate.stage builds the evaluation's job
    for benchmark, user in user_turns.items():
        chat = messages(job.system, job.prompt, user)
        assert _render(_qwen(cfg.students[0]), chat) == _chatml(system, user), benchmark
