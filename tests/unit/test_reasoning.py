"""A thinking model's output kept in two parts, and only the answer graded (issue 28, item 1):
splitting at think markers, a server's reasoning field, unclosed reasoning counted as truncated
with no answer, and chat-template arguments and extra request fields reaching the model."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mixray.curate.stage import score, stats
from mixray.generate.config import ReasoningConfig, SamplingConfig
from mixray.generate.engine import Completion
from mixray.generate.http import HTTPEngine, parse_response
from mixray.generate.reasoning import Split, columns, graded, split

THINK = ReasoningConfig(split="markers")


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>\n6 times 7 is 42\n</think>\n\nThe answer is \\boxed{42}.",
     Split("6 times 7 is 42", "The answer is \\boxed{42}.")),
    # an empty block, as some templates' non-thinking mode has the model write
    ("<think>\n\n</think>\n\n\\boxed{42}", Split("", "\\boxed{42}")),
    # Qwen3 with thinking off: its template closed an empty block in the prompt; all answer
    ("\\boxed{42}", Split(None, "\\boxed{42}")),
    # cut inside its reasoning: no answer, whatever numbers the reasoning holds
    ("<think>\nmaybe 41, or \\boxed{41}", Split("maybe 41, or \\boxed{41}", None)),
])
def test_a_thinking_models_output_is_split_at_its_markers(text: str, expected: Split) -> None:
    assert split(text, THINK) == expected


def test_a_block_the_template_opened_is_reasoning_up_to_its_close() -> None:
    """DeepSeek-R1's template opens the block in the prompt: the output starts inside it, and
    one that never closes it has no answer."""
    r1 = ReasoningConfig(split="close_marker")
    assert split("6 times 7 is 42</think>\\boxed{42}", r1) == Split("6 times 7 is 42",
                                                                      "\\boxed{42}")
    assert split("6 times 7 is \\boxed{42}", r1) == Split("6 times 7 is \\boxed{42}", None)


def test_a_model_that_does_not_think_is_all_answer_and_a_servers_field_wins() -> None:
    assert split("<think>x</think>y", ReasoningConfig()) == Split(None, "<think>x</think>y")
    assert split("\\boxed{42}", ReasoningConfig(), server_reasoning="6 x 7") == \
        Split("6 x 7", "\\boxed{42}")
    custom = ReasoningConfig(split="markers", open_marker="<reason>", close_marker="</reason>")
    assert split("<reason>a</reason>b", custom) == Split("a", "b")


def test_curation_grades_the_answer_and_counts_unclosed_reasoning_as_truncated() -> None:
    """The gold answer inside the reasoning earns nothing: a wrong answer after it is wrong, and
    a trace cut inside its reasoning has no answer and is truncated."""
    rows = [
        ("<think>\\boxed{42}</think>\\boxed{41}", "6 x 7? \\boxed{42}", "\\boxed{41}", "stop"),
        ("<think>is it \\boxed{42}", "is it \\boxed{42}", None, "length"),
        ("<think>is it \\boxed{42}", "is it \\boxed{42}", None, "stop"),  # EOS inside the block
        ("<think>x</think>\\boxed{42}", "x", "\\boxed{42}", "stop"),
    ]
    table = pa.table({
        "problem_id": [str(i) for i in range(4)], "sample_idx": [0] * 4, "answer": ["42"] * 4,
        "completion": [r[0] for r in rows], "reasoning": [r[1] for r in rows],
        "response": [r[2] for r in rows], "n_tokens": [10] * 4,
        "finish_reason": [r[3] for r in rows], "error": pa.array([None] * 4, pa.string())})
    scored = score(table)
    assert scored["correct"].to_pylist() == [False, False, False, True]
    assert scored["extracted"].to_pylist()[:3] == ["41", None, None]
    assert stats(scored)["truncation_rate"] == 0.5 and stats(scored)["no_answer_rate"] == 0.5


def test_a_row_without_a_response_column_is_graded_on_its_completion() -> None:
    assert graded({"completion": "\\boxed{3}", "finish_reason": "stop"}) == ("\\boxed{3}", "stop")
    assert graded({"completion": "x", "response": None, "finish_reason": "length"}) == \
        ("", "length")


def test_reasoning_tokens_come_from_the_server_else_the_tokenizer() -> None:
    outs = [Completion("<think>a b c</think>d", 9, "stop"),
            Completion("d", 9, "stop", reasoning="a b", reasoning_tokens=5),
            Completion("<think>never closed", 2, "length")]
    cols = columns(outs, THINK, lambda text: len(text.split()))
    assert list(cols["reasoning"]) == ["a b c", "a b", "never closed"]
    assert list(cols["reasoning_tokens"]) == [3, 5, 2]
    assert list(cols["response"]) == ["d", "d", None]
    plain = columns([Completion("d", 1, "stop")], ReasoningConfig(), lambda text: 99)
    assert (list(plain["reasoning"]), list(plain["reasoning_tokens"])) == ([None], [None])


def test_a_servers_reasoning_field_and_its_token_count_are_read() -> None:
    out = parse_response({
        "choices": [{"message": {"content": "\\boxed{42}", "reasoning_content": "6 x 7"},
                     "finish_reason": "stop"}],
        "usage": {"completion_tokens": 12, "completion_tokens_details": {"reasoning_tokens": 9}}})
    assert (out.text, out.reasoning, out.reasoning_tokens, out.n_tokens) == \
        ("\\boxed{42}", "6 x 7", 9, 12)
    plain = parse_response({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                            "usage": {"completion_tokens": 1}})
    assert plain.reasoning is None and plain.reasoning_tokens is None


def test_chat_template_arguments_and_extra_fields_reach_the_request() -> None:
    """One model as two teachers: Qwen3 on a vLLM server with thinking off, gpt-oss with a low
    reasoning effort."""
    from mixray.generate.config import HTTPEngineConfig

    cfg = HTTPEngineConfig(kind="http", base_url="http://127.0.0.1:1/v1", model="m",
                           extra_body={"reasoning_effort": "low"})
    engine = HTTPEngine.from_config(cfg, chat_template_kwargs={"enable_thinking": False})
    body = engine.request_body([{"role": "user", "content": "q"}], SamplingConfig(), seed=3)
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["reasoning_effort"] == "low" and body["seed"] == 3
    bare = HTTPEngine.from_config(cfg.model_copy(update={"extra_body": {}}))
    assert "chat_template_kwargs" not in bare.request_body([], SamplingConfig(), seed=0)


def test_an_hf_engine_renders_its_chat_template_with_the_runs_arguments() -> None:
    """A Qwen3-style template switch (enable_thinking), on the tiny model's tokenizer: the
    generation prompt carries the empty think block only when thinking is off."""
    from mixray import models
    from mixray.generate.hf import HFEngine

    template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined "
                "and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
    engine = HFEngine.load(models.resolve("tiny-random"),
                           chat_template_kwargs={"enable_thinking": False})
    engine.tokenizer.chat_template = template
    rendered: list[str] = []
    apply = engine.tokenizer.apply_chat_template
    engine.tokenizer.apply_chat_template = lambda *a, **k: rendered.append(apply(*a, **k)) or \
        rendered[-1]
    engine.generate([[{"role": "user", "content": "1+1?"}]], SamplingConfig(max_new_tokens=2))
    assert rendered == ["<|user|>1+1?\n<|assistant|><think>\n\n</think>\n\n"]
    engine.chat_template_kwargs = {}
    engine.generate([[{"role": "user", "content": "1+1?"}]], SamplingConfig(max_new_tokens=2))
    assert rendered[-1] == "<|user|>1+1?\n<|assistant|>"
