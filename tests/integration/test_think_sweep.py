"""A smoke sweep as people distil now (issue 28): one thinking teacher in both modes (thinking on
for the long pool, off for the short one), a student whose chat template has a think block, and
training problems decontaminated against two benchmarks.

The teacher is the tiny model, taught here in seconds to write a think block when its template
lets it think and a bare boxed answer when the template has closed an empty block in the prompt
(a Qwen3-style template with an enable_thinking switch, `QWEN3_STYLE`, written for the tests
from the format's public description). Two training problems are planted: one exactly a
problem of benchmark `bench_a`, one a light rewording of a problem of `bench_b`.

Asserted: both are counted per benchmark in the problems' summary and on the MLflow parent, and
are in no pool; the long pool's rows hold reasoning and answer apart, the short pool's no
reasoning; and the trial's manifest, rendered through the student's template as training
renders it, gives token by token the prompt masked out and, as the loss's targets, a long row's
think block and answer and a short row's empty block and answer (the non-thinking form).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mixray import models
from mixray.config import load_sweep
from mixray.generate.job import messages
from mixray.sweep.run import run_sweep
from mixray.train.data import IGNORE, encode

pytestmark = [pytest.mark.integration]

QWEN3_STYLE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content"
    " + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
THOUGHT, ANSWER = "<think>\nadd the two numbers\n</think>\n\n\\boxed{10}", "\\boxed{10}"
BENCH_A = "What is the sum of three and seven, written as a single decimal number?"
BENCH_B = ("A train leaves the station at noon travelling north at forty miles per hour; "
           "how far has it gone by three o'clock?")
PLANTED = [BENCH_A,  # exactly bench_a's
           BENCH_B.replace("how far has it gone", "what distance has it covered")]  # reworded


def student(out: Path) -> Path:
    """The tiny model with the Qwen3-style template: a student whose template thinks."""
    src = models.resolve("tiny-random")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = QWEN3_STYLE
    AutoModelForCausalLM.from_pretrained(src).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def teacher(out: Path, chats: list[list[dict[str, str]]]) -> Path:
    """The student's model and template, fitted (a few hundred Adam steps, seconds on a CPU)
    to think before answering when the template lets it, and to answer at once when not."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student(out))
    model = AutoModelForCausalLM.from_pretrained(out)
    pairs = []
    for chat in chats:
        for thinking, target in ((True, THOUGHT), (False, ANSWER)):
            prefix = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=thinking)
            ids = tok(prefix + target + "<|im_end|>", add_special_tokens=False,
                      return_tensors="pt")["input_ids"]
            labels = ids.clone()
            labels[:, :len(tok(prefix, add_special_tokens=False)["input_ids"])] = -100
            pairs.append((ids, labels))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        loss = sum(model(input_ids=i, labels=lab).loss for i, lab in pairs) / len(pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.005:
            break
    model.save_pretrained(out)
    return out


def write(path: Path, problems: list[str]) -> str:
    path.write_text("".join(json.dumps({"problem": p, "answer": "10"}) + "\n" for p in problems))
    return str(path)


def test_a_thinking_teacher_in_both_modes_a_think_template_student_and_decontamination(
        ray_cluster, tmp_path: Path) -> None:
    train = [f"What is {a} + {10 - a}?" for a in range(1, 7)] + PLANTED
    sweep = {
        "name": "think-smoke", "run_root": str(tmp_path / "runs"),
        "students": [str(student(tmp_path / "student"))],
        "problems": {"source": {"kind": "dataset", "path": write(tmp_path / "train.jsonl", train),
                                "eval_path": write(tmp_path / "held.jsonl", ["What is 9 + 1?"])},
                     "train_size": "all", "eval_size": "all"},
        "teachers": {label: {"model": "tiny-random", "chat_template_kwargs": {
            "enable_thinking": label == "long"}, "reasoning": {"split": "markers"},
            "sampling": {"max_new_tokens": 48}, "batch_size": 8} for label in ("long", "short")},
        "curate": {"keep": "all"},
        "mix": {"pools": {"long": 0.5, "short": 0.5}, "budget": "all"},
        "train": {"num_workers": 1, "micro_batch_size": 2, "max_steps": 2, "max_length": 256},
        "evaluate": {"benchmarks": ["heldout", f"bench_a={write(tmp_path / 'a.jsonl', [BENCH_A])}",
                                    f"bench_b={write(tmp_path / 'b.jsonl', [BENCH_B])}"],
                     "sampling": {"max_new_tokens": 8}},
        "search": {"long_share": [0.5]},
    }
    cfg = load_sweep(_file(tmp_path, sweep))
    chats = [messages(cfg.teachers["long"].system_turn, cfg.teachers["long"].prompt, p)
             for p in train]
    model = str(teacher(tmp_path / "teacher", chats))
    for spec in sweep["teachers"].values():  # one model, two teachers: thinking on and off
        spec["model"] = model
    cfg = load_sweep(_file(tmp_path, sweep))
    summary = run_sweep(cfg)
    assert summary["status"] == "finished", summary["trials"]

    # Decontamination: the two planted problems counted per benchmark, in no pool
    found = summary["stages"]["problems"]["summary"]["decontamination"]
    assert found["dropped"] == {"heldout": 0, "bench_a": 1, "bench_b": 1}
    parent = MlflowClient(cfg.tracking_uri).get_run(summary["mlflow"]["parent_run_id"])
    assert parent.data.metrics["decontamination/dropped/bench_a"] == 1
    assert parent.data.metrics["decontamination/dropped/bench_b"] == 1
    for label in ("long", "short"):
        pool = pq.read_table(Path(summary["stages"][f"curate.{label}"]["path"]) / "pool.parquet")
        assert pool.num_rows == 6 and not set(pool["problem"].to_pylist()) & set(PLANTED)
        gen = pq.read_table(Path(summary["stages"][f"generate.{label}"]["path"]) / "data")
        thought = [(r["reasoning"], r["response"]) for r in gen.to_pylist()]
        if label == "long":   # a closed think block, then the answer
            assert all(reasoning and answer for reasoning, answer in thought), thought
        else:
            assert not any(reasoning for reasoning, _ in thought), thought

    # ...and in the trial's data card
    (trial,) = summary["trials"]
    out = cfg.root.trial(summary["invocation"], trial["trial"])
    card = json.loads((out / "data_card.json").read_text())
    assert card["decontamination"]["dropped"] == found["dropped"]

    # The manifest as training renders it through the student's template, token by token
    tok = _tokenizer(cfg.students[0])
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    long_row = next(r for r in rows if r["pool"] == "long")
    short_row = next(r for r in rows if r["pool"] == "short")
    _, reasoning, answer = _parts(long_row["completion"])
    for row, target in ((long_row, f"<think>\n{reasoning}\n</think>\n\n{answer}<|im_end|>\n"),
                        (short_row, f"<think>\n\n</think>\n\n{short_row['completion']}"
                                    "<|im_end|>\n")):
        ex = encode(tok, cfg.train.system_prompt, row["prompt"], row["completion"], 256)
        prompt = tok.apply_chat_template(
            [{"role": "system", "content": cfg.train.system_prompt},
             {"role": "user", "content": row["prompt"]}], tokenize=False,
            add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tok(target, add_special_tokens=False)["input_ids"]
        assert ex.input_ids == p_ids + t_ids
        assert ex.labels == [IGNORE] * len(p_ids) + t_ids   # the loss: reasoning and answer


def _file(tmp_path: Path, sweep: dict) -> Path:
    path = tmp_path / "think-smoke.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _parts(completion: str) -> tuple[str, str, str]:
    """(before the block, the reasoning, the answer) of a completion with a think block."""
    before, _, rest = completion.partition("<think>")
    reasoning, closed, answer = rest.partition("</think>")
    assert closed, completion
    return before, reasoning.strip("\n"), answer.lstrip("\n")
