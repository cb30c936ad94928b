"""Each student evaluated before any fine-tuning: the base every trial's gain is measured from.

Once per sweep invocation, before the trials, on the trials' held-out problems with the sweep's
evaluation section (a searched `evaluate.*` value is a trial's own; the base uses the section as
written). The generations are the evaluate stage's keyed outputs under the run root (the weights,
engine, sampling and problems make the key), so every later sweep with the same student and
evaluation finds them there and only scores them again. Logged on the parent run
(`tracking.log_baseline`) and returned as `analysis.Baseline` records.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mixray import tracking
from mixray.config import SweepConfig
from mixray.evaluate.stage import evaluate_model
from mixray.runroot import SCORES_FILE
from mixray.science.analysis import Baseline
from mixray.science.significance import Scores

log = logging.getLogger(__name__)


def evaluate_baselines(cfg: SweepConfig, target: tracking.Target, student_paths: dict[str, Path],
                       eval_problems: Path, parent_id: str, out_dir: Path) -> dict[str, Baseline]:
    """Evaluate every student as it was placed (``student_paths``) into ``out_dir/<name>``.

    A student whose evaluation fails (weights that do not load) has no baseline: the error is
    logged and tagged on the parent run (``mixray.baseline_error.<name>``), and the sweep goes
    on, since that student's own trials then fail with it and the other students' are unharmed.
    """
    out = {}
    for i, student in enumerate(cfg.students):
        eval_dir = out_dir / f"{i}-{Path(student).name}"  # two students may share a name
        try:
            metrics = evaluate_model(
                student_paths[student], eval_problems, cfg.evaluate, cfg.train.system_prompt,
                eval_dir, root=cfg.run_root_path, placement=cfg.resources.placement("evaluation"))
        except Exception as e:  # noqa: BLE001 - recorded on the parent run, not swallowed
            log.error("baseline %s: the evaluation before fine-tuning failed: %s", student,
                      str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
            tracking.tag_parent(target, parent_id, f"mixray.baseline_error.{Path(student).name}",
                                f"{type(e).__name__}: {e}")
            continue
        tracking.log_baseline(target, parent_id, student, metrics, eval_dir)
        scores = Scores.from_json(json.loads((eval_dir / SCORES_FILE).read_text()))
        out[student] = Baseline(student, metrics["eval_accuracy"],
                                metrics.get("eval_accuracy_stderr"), scores)
        log.info("baseline %s (before fine-tuning): accuracy %.3f ± %.3f", student,
                 metrics["eval_accuracy"], metrics.get("eval_accuracy_stderr", float("nan")))
    return out
