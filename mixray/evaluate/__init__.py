"""Evaluation: benchmarks through the generate stage's engines, scored, with error bars.

``config`` (the `evaluate` section and the judge's), ``benchmarks`` (specs, the paper's registry,
loading), ``judge`` (the optional LLM judge's prompt and verdicts), ``scoring`` (pass@k, maj@k,
standard errors), ``stage`` (`evaluate_model`, the stage a sweep trial calls) and ``__main__``
(the CLI, ``python -m mixray.evaluate``, whose MLflow run `mixray.tracking.log_evaluation`
writes).

Nothing is imported here: reading a sweep file imports ``config``, and that stays free of Ray.
"""
