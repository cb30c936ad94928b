"""The `train` section: how a student is fine-tuned (full or LoRA), one DeepSpeed loop launched by
Ray Train (`mixray.train.launch`) or torchrun (`python -m mixray.train`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mixray.schema import Strict

# Loss positions per head + cross-entropy chunk (mixray.train.loss; the memory preview counts
# it). The fp32 logits of one chunk are the loss's peak: at Qwen2.5's vocabulary (152k) 1024
# positions are 0.62 GB (a softmax gradient as much again in backward), against 5.0 GB for the
# 8,192 positions of one long-CoT sequence; at SmolLM2's 49k, 0.2 GB. Smaller chunks save little
# more (the hidden states, 8k x 5k x 2 bytes = 84 MB at 32B, are held anyway) and make more,
# smaller matmuls.
LOSS_CHUNK = 1024


class LoraConfig(Strict):
    """Low-rank adapters (peft LoRA) instead of full fine-tuning: the student's weights stay
    frozen and only the adapters train; the exported student has them merged in, so it is a
    plain HF folder that evaluation loads like any other."""

    rank: int = Field(16, ge=1, description="r: the inner dimension of each adapter.")
    alpha: float = Field(32.0, gt=0, description="Adapter updates are scaled by alpha / rank.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on each adapter's input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Names (or name suffixes) of the linear layers that get "
        "adapters, e.g. [q_proj, v_proj]; all-linear: every linear layer but the output head."
    )

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, targets: list[str] | str) -> list[str] | str:
        if isinstance(targets, list) and (not targets or not all(targets)):
            raise ValueError("give train.lora.target_modules at least one module name "
                             "(or all-linear)")
        return targets


class TrainConfig(Strict):
    """Student fine-tuning. The paper's recipe is expressible: lr 1e-5, cosine, warmup_ratio 0,
    epochs 2, bf16, ZeRO-3, global batch 16 or 80 (PAPER.md, "Training")."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    dtype: Literal["fp32", "bf16"] = "fp32"
    num_workers: int = Field(2, ge=1)
    micro_batch_size: int = Field(
        2, ge=1, description="Rows per worker per forward pass: samples, or packed sequences."
    )
    global_batch_size: int | None = Field(
        None, ge=1, description="Rows per optimizer step = micro x workers x accumulation; "
        "omitted: micro x workers x gradient_accumulation_steps."
    )
    gradient_accumulation_steps: int | None = Field(
        None, ge=1,
        description="Micro-batches per optimizer step; omitted: from global_batch_size, else 1.",
    )
    max_steps: int | None = Field(
        8, ge=1,
        description="Optimizer steps; the manifest is cycled if needed. Exclusive with epochs.",
    )
    epochs: float | None = Field(
        None, gt=0, description="Passes over the manifest, instead of max_steps."
    )
    lr: float = Field(1e-5, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of the steps with linear warmup."
    )
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping; 0 turns it off.")
    gradient_checkpointing: bool = False
    max_length: int = Field(512, ge=16, description="Tokens per sample, and per packed sequence.")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="A sample over max_length loses its response tail, or is left out."
    )
    max_dropped_fraction: float = Field(
        0.1, ge=0, le=1, description="More affected samples (truncated, dropped, empty response) "
        "than this share of the manifest is an error, not a silent shrink."
    )
    packing: Literal["none", "greedy"] = Field(
        "none", description="greedy: several samples per sequence of max_length, no attention "
        "across them; micro_batch_size then counts packed sequences."
    )
    system_prompt: str = "You are a helpful assistant."
    responses: Literal["template", "as_written"] = Field(
        "template", description="How a row's completion becomes the trained assistant turn. "
        "template: as the student's chat template renders it (a thinking template keeps a long "
        "row's think block and gives a short row its empty one, its non-thinking form); "
        "as_written: exactly as the teacher wrote it, closed by the template's end of turn (a "
        "short row then has no think block at all).")
    checkpoint_every: int | None = Field(
        None, ge=1, description="DeepSpeed checkpoint every N steps (and always at the end)."
    )
    max_failures: int = Field(0, ge=0, description="Worker failures a run survives, resuming.")
    keep_checkpoints: Literal["resume", "all"] = Field(
        "resume", description="Which DeepSpeed checkpoints (ZeRO optimizer state: 2.6 GB per "
        "SmolLM2-135M trial) stay on disk. resume: the latest two while a run trains, so a dead "
        "worker, a failed trial (sweep --resume) or a torchrun rerun resumes; once a run has "
        "finished (trained, exported, evaluated), only the exported student and its records; a "
        "trial stopped early keeps nothing. all: every checkpoint stays. Changes disk use only, "
        "never an artifact or a cache or resume key.",
    )
    eval_every: int | None = Field(
        None, ge=1, description="Steps between validation losses (val_loss, val_loss/<pool>) on "
        "mix.validation_problems; also computed at the last step and where ASHA judges a trial. "
        "Omitted: only those two.",
    )
    seed: int = 42
    lora: LoraConfig | None = Field(
        None, description="Train LoRA adapters (merged into the exported student); "
        "omitted: full fine-tuning."
    )

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_max_steps(cls, data: Any) -> Any:
        """Giving epochs turns the default max_steps off; giving both is a mistake."""
        if isinstance(data, dict) and data.get("epochs") is not None:
            if data.get("max_steps") is not None:
                raise ValueError("give train.epochs or train.max_steps, not both "
                                 "(set train.max_steps to null to train by epochs)")
            data = data | {"max_steps": None}
        return data

    @model_validator(mode="after")
    def _batch_adds_up(self) -> TrainConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give train.epochs or train.max_steps")
        per_pass = self.micro_batch_size * self.num_workers
        accum = self.gradient_accumulation_steps
        if self.global_batch_size is not None:
            if self.global_batch_size % per_pass:
                raise ValueError(
                    f"train.global_batch_size {self.global_batch_size} is not a multiple of "
                    f"micro_batch_size {self.micro_batch_size} x num_workers {self.num_workers} "
                    f"= {per_pass}")
            if accum is not None and accum * per_pass != self.global_batch_size:
                raise ValueError(
                    f"train.global_batch_size {self.global_batch_size} != micro_batch_size "
                    f"{self.micro_batch_size} x num_workers {self.num_workers} x "
                    f"gradient_accumulation_steps {accum} = {accum * per_pass}")
        return self

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step on each worker."""
        if self.global_batch_size is not None:
            return self.global_batch_size // (self.micro_batch_size * self.num_workers)
        return self.gradient_accumulation_steps or 1

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.num_workers * self.accumulation
