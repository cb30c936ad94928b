"""Evaluation: benchmarks through the generate stage's engines, scored, with error bars.

``benchmarks`` (specs, the paper's registry, loading), ``judge`` (the optional LLM judge),
``scoring`` (pass@k, maj@k, standard errors), ``stage`` (`evaluate_model`, the stage a sweep
trial calls) and ``__main__`` (the CLI, ``python -m mixray.evaluate``, whose MLflow run
`mixray.tracking.log_evaluation` writes).

`evaluate_model` is imported lazily: `mixray.config` imports the spec modules of this package,
and `stage` imports `mixray.config`, so an eager import here would be circular.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_model"]


def __getattr__(name: str) -> Any:
    if name == "evaluate_model":
        from mixray.evaluate.stage import evaluate_model

        return evaluate_model
    raise AttributeError(f"module 'mixray.evaluate' has no attribute {name!r}")
