"""Hugging Face transformers engine: batched `generate` with left padding, for CPUs, laptops and
single GPUs (``device="cuda"``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from mixray.generate.config import SamplingConfig
from mixray.generate.engine import Completion, Messages, batch_seed

DType = Literal["float32", "bfloat16", "float16"]


class HFEngine:
    def __init__(self, model, tokenizer, chat_template_kwargs: dict[str, Any] | None = None
                 ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template_kwargs = chat_template_kwargs or {}

    @classmethod
    def load(cls, model_path: Path | str, torch_threads: int = 1, *, device: str = "cpu",
             dtype: DType = "float32", chat_template_kwargs: dict[str, Any] | None = None
             ) -> HFEngine:
        """``device``: "cpu" or "cuda" (the GPU Ray gave this process). fp32 is the CPU default:
        bf16 matmuls on CPUs without AMX are several times slower. ``chat_template_kwargs``:
        arguments of the model's chat template (e.g. enable_thinking)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the HF engine was given a GPU (gpus_per_replica > 0) but CUDA is "
                               "not available in this process: is torch a CUDA build here?")
        torch.set_num_threads(torch_threads)
        tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        return cls(model.to(device).eval(), tokenizer, chat_template_kwargs)

    def close(self) -> None:
        """Drop the model (and, on a GPU, the cached blocks it leaves behind)."""
        on_gpu = self.model is not None and self.model.device.type == "cuda"
        self.model = None
        if on_gpu:
            torch.cuda.empty_cache()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def generate(self, prompts: list[Messages], sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        texts = [
            self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True,
                                               **self.chat_template_kwargs)
            for p in prompts
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.model.device)
        greedy = sampling.temperature == 0.0
        # One generator per batch: seeded from the rows, so two batches never share a stream
        # (n samples of one problem in two batches would otherwise come out identical).
        torch.manual_seed(sampling.seed if seeds is None else batch_seed(seeds))
        out = self.model.generate(
            **enc,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1]:]
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        results = []
        for row in new.tolist():
            stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
            tokens = row if stop is None else row[:stop]
            results.append(
                Completion(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    n_tokens=len(tokens),
                    finish_reason="length" if stop is None else "stop",
                )
            )
        return results
