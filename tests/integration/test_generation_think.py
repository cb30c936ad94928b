"""A model that thinks, through the generation stage (issue 28): a tiny model built in code and
taught, in a few seconds of training here, to write a think block before its boxed answer. Its
rows hold the reasoning and the answer apart, curation grades the answer alone, and a trace cut
inside its reasoning has no answer and counts as truncated, though its reasoning holds the gold
number (the last-number rule would have graded it right)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixray import models
from mixray.artifacts import StageDir
from mixray.curate.stage import score, stats
from mixray.generate.config import TeacherConfig
from mixray.generate.job import messages
from mixray.generate.stage import generate_teacher

pytestmark = [pytest.mark.integration]
THOUGHT = "<think>\n7 + 3 = 10\n</think>\n\n\\boxed{10}"


def thinking_model(out: Path, chats: list[list[dict[str, str]]]) -> Path:
    """tiny-random fitted to answer each of ``chats`` with THOUGHT (greedy decoding then
    reproduces it: a few hundred Adam steps on these sequences, seconds on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = models.resolve("tiny-random")
    tok, model = AutoTokenizer.from_pretrained(src), AutoModelForCausalLM.from_pretrained(src)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = []
    for chat in chats:
        prefix = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok(prefix + THOUGHT + tok.eos_token, add_special_tokens=False,
                  return_tensors="pt")["input_ids"]
        labels = ids.clone()
        labels[:, :len(tok(prefix, add_special_tokens=False)["input_ids"])] = -100
        batches.append((ids, labels))
    for _ in range(400):
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in batches)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def problems(root: Path) -> StageDir:
    stage = StageDir(root, "problems", {"think": 1})
    tmp = stage.staging()
    rows = pa.table({"problem_id": ["a", "b", "c"], "answer": ["10", "10", "10"],
                     "problem": ["What is 7 + 3?", "What is 4 + 6?", "What is 2 + 8?"]})
    pq.write_table(rows, tmp / "train.parquet")
    (tmp / "summary.json").write_text(json.dumps({"train": 3}))
    stage.commit(tmp)
    return stage


def test_a_thinking_models_rows_keep_reasoning_apart_and_only_its_answer_is_graded(
        ray_cluster, tmp_path: Path) -> None:
    source = problems(tmp_path)
    teacher = TeacherConfig(model="tiny-random", reasoning={"split": "markers"}, batch_size=3,
                            sampling={"max_new_tokens": 40})
    texts = pq.read_table(source.path / "train.parquet")["problem"].to_pylist()
    model = thinking_model(tmp_path / "thinking-tiny", [
        messages(teacher.system_turn, teacher.prompt, t) for t in texts])
    teacher = teacher.model_copy(update={"model": str(model)})  # its key names this model
    whole, _ = generate_teacher("think", teacher, model, source, tmp_path)
    rows = pq.read_table(whole.path / "data").to_pylist()
    assert [(r["reasoning"], r["response"]) for r in rows] == [("7 + 3 = 10", "\\boxed{10}")] * 3
    assert all(0 < r["reasoning_tokens"] < r["n_tokens"] for r in rows)
    assert score(pq.read_table(whole.path / "data"))["correct"].to_pylist() == [True] * 3

    # Cut after 8 tokens, inside the think block: the reasoning never closed, so no answer
    cut = teacher.model_copy(update={"sampling": teacher.sampling.model_copy(
        update={"max_new_tokens": 8})})
    short, _ = generate_teacher("think", cut, model, source, tmp_path)
    table = pq.read_table(short.path / "data")
    assert all(r["response"] is None and r["reasoning"] for r in table.to_pylist())
    scored = score(table)
    assert scored["extracted"].to_pylist() == [None] * 3
    assert stats(scored)["truncation_rate"] == 1.0 and stats(scored)["acceptance_rate"] == 0.0
