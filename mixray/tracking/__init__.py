"""The only package that talks to MLflow (`tests/unit/test_layout.py` holds that rule).

`writer` writes the runs (a parent per sweep invocation, a child per trial, a standalone
evaluation's run) to a `Target`; `records` reads an invocation back as the plain records of
`mixray.science.analysis` for the report and the proposer; `datasets` logs MLflow dataset
inputs. The writer's calls are re-exported here: ``from mixray import tracking`` then
``tracking.start_child(...)``.
"""

from mixray.tracking.writer import (
    PARAMS_TAG,
    PARENT_TAG,
    STOPPED_TAG,
    SUMMARY_METRICS,
    TRIAL_TAG,
    Finished,
    Target,
    end_parent,
    ensure_experiment,
    fail_child,
    find_child,
    finish_child,
    log_baseline,
    log_decontamination,
    log_evaluation,
    log_gaps,
    log_mix_input,
    log_upstream_inputs,
    reopen_parent,
    start_child,
    start_parent,
    stop_child,
    system_metrics,
    tag_parent,
)

__all__ = ["PARAMS_TAG", "PARENT_TAG", "STOPPED_TAG", "SUMMARY_METRICS", "TRIAL_TAG", "Finished",
           "Target", "end_parent", "ensure_experiment", "fail_child", "find_child",
           "finish_child", "log_baseline", "log_decontamination", "log_evaluation", "log_gaps",
           "log_mix_input",
           "log_upstream_inputs", "reopen_parent", "start_child", "start_parent", "stop_child",
           "system_metrics", "tag_parent"]
