"""The states of a Tune experiment's trials as metrics (``ray_mixray_tune_trials``, by
``experiment`` and ``state``) and as the console's live trials line (`TrialConsole`): Tune
callbacks that the driver's Tune loop calls.

A trial is pending, running, paused, errored, finished (its last report carries the trial's
completion flag) or stopped (Tune terminated it without one: the scheduler, ASHA, stopped it
early). The counts are published at most once per ``interval_s`` from Tune's loop, and once more
when the experiment ends, so the last value is the experiment's outcome.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from mixray import metrics

# The flag on a trial's last report only (absent: stopped early). Defined here, where trial
# states are read; mixray.sweep.tune, which sends it, imports it from here.
COMPLETE = "mixray_trial_complete"
log = logging.getLogger("mixray.sweep.tune")
_STATUS = {Trial.PENDING: "pending", Trial.RUNNING: "running", Trial.PAUSED: "paused",
           Trial.ERROR: "errored"}


def trial_state(trial: Trial) -> str:
    """One of `metrics.TRIAL_STATES` for a trial as Tune holds it."""
    if trial.status == Trial.TERMINATED:
        return "finished" if (trial.last_result or {}).get(COMPLETE) else "stopped"
    return _STATUS[trial.status]


def state_counts(trials: list[Trial]) -> dict[str, int]:
    """How many trials are in each state (the states with none left out)."""
    counts: dict[str, int] = {}
    for trial in trials:
        state = trial_state(trial)
        counts[state] = counts.get(state, 0) + 1
    return counts


class TrialStateMetrics(Callback):
    """Sets ``mixray_tune_trials{experiment, state}`` from Tune's trials as they change."""

    def __init__(self, experiment: str, interval_s: float = 1.0) -> None:
        self.experiment = experiment
        self.interval_s = interval_s
        self._last = -math.inf

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        # Tune's loop steps many times a second; the gauges need not follow each step.
        if time.monotonic() - self._last >= self.interval_s:
            self._publish(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._publish(trials)

    def _publish(self, trials: list[Trial]) -> None:
        self._last = time.monotonic()
        metrics.set_trial_states(self.experiment, state_counts(trials))


def trial_label(trial: Trial) -> str:
    """mixray's name of a Tune trial: a grid trial carries it in its config; Optuna's are
    named from Tune's id (mixray.sweep.tune.optuna_trial)."""
    return (trial.config.get("trial") or {}).get("name") or trial.trial_id


def _progress(trial: Trial) -> str:
    result = trial.last_result or {}
    if "step" not in result:
        return f"{trial_label(trial)} starting"
    loss = result.get("train_loss")
    return (f"{trial_label(trial)} step {result['step']:.0f}"
            + (f" loss {loss:.3f}" if loss is not None else "")
            + (f" {result['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in result else ""))


class TrialConsole(Callback):
    """One live line for the trials (how many in each state, each running one's step, loss and
    tokens/s: what Ray Train forwards) and a line as each one ends; Tune's own tables go to the
    log file with the rest of its output (mixray.sweep.console)."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self._last = -math.inf

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if time.monotonic() - self._last < self.interval_s:
            return
        self._last = time.monotonic()
        counts = ", ".join(f"{n} {state}" for state, n in sorted(state_counts(trials).items()))
        running = "; ".join(_progress(t) for t in trials if t.status == Trial.RUNNING)
        log.info("trials: %s%s", counts, f" | {running}" if running else "",
                 extra={"live": "trials"})

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        result = trial.last_result or {}
        acc = result.get("eval_accuracy")
        how = "finished" if result.get(COMPLETE) else "stopped early"
        log.info("trial %s %s%s", trial_label(trial), how,
                 f": eval accuracy {acc:.3f}" if acc is not None else "")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        log.info("trial %s FAILED (its last error lines come with the summary)",
                 trial_label(trial))
