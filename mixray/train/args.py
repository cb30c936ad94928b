"""What one run of the SFT loop is given: the sweep's train section, whole, and the run's own
inputs that the section does not hold (model, manifest, validation rows, threads, rungs).

Both `loop.py` and `engine.py` read it, and it imports neither, so they do not import each other.
The train section is kept whole rather than copied field by field, so that a field added to
`TrainConfig` reaches the loop without being listed again here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixray.train.config import TrainConfig


@dataclass(frozen=True)
class LoopArgs:
    train: TrainConfig
    model_path: str
    manifest_path: str
    torch_threads: int
    validation_path: str | None = None  # held-out rows (mix/validation.py); None: no val_loss
    # A scheduler's rungs: always reported to Ray (launch.RayReporter), with val_loss if any
    eval_steps: tuple[int, ...] = ()

    def record(self) -> dict:
        """These arguments as JSON (a checkpoint's loop_args.json): one flat mapping of the train
        keys, the derived accumulation and the run's inputs, so a reader finds every key at the
        top level."""
        return (self.train.model_dump(mode="json")
                | {"accumulation": self.train.accumulation, "model_path": self.model_path,
                   "manifest_path": self.manifest_path, "torch_threads": self.torch_threads,
                   "validation_path": self.validation_path, "eval_steps": list(self.eval_steps)})
