"""Hugging Face transformers engine: batched `generate` with left padding, for CPUs and laptops."""

from __future__ import annotations

from pathlib import Path

import torch

from mixray.config import SamplingConfig
from mixray.generate.engine import Completion, Messages


class HFEngine:
    def __init__(self, model, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, model_path: Path | str, torch_threads: int = 1) -> HFEngine:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(torch_threads)
        tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # fp32: bf16 matmuls on CPUs without AMX are several times slower.
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        return cls(model, tokenizer)

    @torch.inference_mode()
    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[Completion]:
        texts = [
            self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        greedy = sampling.temperature == 0.0
        torch.manual_seed(sampling.seed)
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
