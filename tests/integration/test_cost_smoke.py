"""The cost preview against what the smoke sweep spent (issue 16): every estimated token count,
per teacher and per trial, generation, training and evaluation, within 25% of the actual one
read from the sweep's files, in summary.json and in the printed summary."""

from __future__ import annotations

import json
from pathlib import Path

from mixray.sweep.summary import format_summary

TOLERANCE = 0.25


def test_estimated_tokens_are_within_a_quarter_of_actual(smoke_sweep) -> None:
    cfg, first, _ = smoke_sweep
    cost = first["cost"]
    assert set(cost["generate"]) == set(cfg.teachers)
    assert set(cost["train"]) == set(cost["evaluate"]) == {t.name for t in cfg.trials()}
    off = {}
    for stage in ("generate", "train", "evaluate"):
        for name, pair in cost[stage].items():
            assert pair["actual"] is not None, f"{stage} {name}: nothing measured"
            assert pair["actual"]["tokens"] > 0 and pair["actual"]["seconds"] > 0
            off[f"{stage} {name}"] = pair["actual"]["tokens"] / pair["estimate"]["tokens"] - 1
    assert all(abs(v) <= TOLERANCE for v in off.values()), off
    # what a later sweep calibrates from
    assert set(cost["measured"]["generate"]) == set(cfg.teachers)
    assert cost["measured"]["train"]["tiny-random"]["tokens_per_s_per_worker"] > 0
    assert json.loads(Path(first["summary_path"]).read_text())["cost"] == cost
    assert "cost, estimate -> actual:" in format_summary(cfg, first)


def test_a_failed_trial_has_no_actual_and_fails_nothing(smoke_sweep) -> None:
    _, _, second = smoke_sweep
    broken = [t["trial"] for t in second["trials"] if t["error"]]
    assert broken and all(second["cost"]["train"][name]["actual"] is None for name in broken)
