"""What a finished sweep spent, read from its files, against the estimate
(`mixray.cost.estimate`): the "cost" of summary.json and the summary's estimate-against-actual
lines.

Actual tokens: a teacher's and an evaluation's are the n_tokens of every row of their
generations (made now or before); a trial's training tokens are those of the rows its loop
consumed: the manifest in train order, cycled up to the steps its history.json records (a packed
run: its epochs x the manifest), each row the student's tokens of the chat-templated system
prompt and prompt, plus the response's n_tokens and the end of the turn, capped at max_length,
as `mixray.train.data.encode` builds it. Times: a generation's stats.json seconds (a reused one
ran before this invocation), a trial's time_train_s and time_eval_s. What was measured (tokens
per response, acceptance, tokens/s per unit) is written too, for a later sweep's
``cost.calibrate_from``. No Ray, no MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mixray.artifacts import TeacherRecord
from mixray.config import SweepConfig
from mixray.cost.estimate import (
    StageCost,
    calibration,
    generation_cost,
    problem_chars,
    startup,
    trial_costs,
    units,
)
from mixray.cost.text import about, duration, human
from mixray.runroot import METRICS_FILE
from mixray.train.config import TrainConfig

log = logging.getLogger(__name__)
# What reading a sweep's files can raise: a missing file, a field an older run did not write
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, IndexError, ZeroDivisionError)


def generated(data: Path) -> tuple[int, int]:
    """(tokens, rows) of a generation's data folder."""
    table = pq.read_table(data, columns=["n_tokens"])
    return int(sum(v or 0 for v in table["n_tokens"].to_pylist())), table.num_rows


def row_lengths(t: TrainConfig, manifest: Path, tokenizer: Any,
                prefixes: dict[str, int]) -> list[int]:
    """Tokens of each manifest row the loop keeps, in train order; `prefixes` caches the
    prompt side by prompt."""
    system = [{"role": "system", "content": t.system_prompt}] if t.system_prompt else []

    def render(prompt: str, answer: list[dict[str, str]] | None = None) -> str:
        turns = [*system, {"role": "user", "content": prompt}, *(answer or [])]
        return tokenizer.apply_chat_template(turns, tokenize=False,
                                             add_generation_prompt=answer is None)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # the end of the turn after a response: what the template adds after an empty one
    suffix = count(render("", [{"role": "assistant", "content": ""}])[len(render("")):])
    table = pq.read_table(manifest, columns=["prompt", "n_tokens"])
    lengths = []
    for prompt, n in zip(table["prompt"].to_pylist(), table["n_tokens"].to_pylist(),
                         strict=True):
        if prompt not in prefixes:
            prefixes[prompt] = count(render(prompt))
        full = prefixes[prompt] + n + suffix
        if prefixes[prompt] < t.max_length and (full <= t.max_length or t.overlong != "drop"):
            lengths.append(min(full, t.max_length))
    return lengths


def trained(one: SweepConfig, trial_dir: Path, train_dir: Path, tokenizer: Any,
            prefixes: dict[str, int]) -> dict[str, float] | None:
    """A finished trial's training tokens and tokens/s per worker; None if it never trained."""
    histories = sorted(train_dir.glob("checkpoint_*/history.json"))
    if not histories or not (trial_dir / "manifest.parquet").is_file():
        return None
    history = json.loads(histories[-1].read_text())
    t = one.train
    lengths = row_lengths(t, trial_dir / "manifest.parquet", tokenizer, prefixes)
    if t.packing == "none":  # the loop's batches are consecutive windows, cycled
        cycles, rest = divmod(int(history[-1]["step"]) * t.global_batch, len(lengths))
        tokens = cycles * sum(lengths) + sum(lengths[:rest])
    else:
        tokens = history[-1]["epoch"] * sum(lengths)
    rate = sum(h["tokens_per_s"] for h in history) / len(history) / t.num_workers
    return {"tokens": tokens, "seconds": history[-1]["wall_s"], "tokens_per_s_per_worker": rate}


def steady_rate(tokens: float, seconds: float, n_units: float, fixed: float) -> float | None:
    """tokens/s per unit once started: a stage's seconds include its start-up, so a run shorter
    than twice that (the smoke sweep's 15 s generations) measures no rate."""
    return tokens / (seconds - fixed) / n_units if seconds > 2 * fixed else None


def _pair(est: StageCost, actual: dict[str, Any] | None) -> dict[str, Any]:
    return {"estimate": {"tokens": est.tokens, "seconds": est.seconds,
                         "gpu_hours": est.gpu_hours}, "actual": actual}


def _teachers(cfg: SweepConfig, records: dict[str, TeacherRecord], measured: Any,
              out: dict[str, Any]) -> None:
    for label, teacher in cfg.teachers.items():
        actual = None
        try:
            gen = records[label].generate
            tokens, rows = generated(gen.path / "data")
            stats = json.loads((gen.path / "stats.json").read_text())
            actual = {"tokens": tokens, "seconds": stats["seconds"], "cached": gen.cached}
            curated = records[label].curate.stats
            n_units, gpus = units(teacher)
            rate = steady_rate(stats["tokens_per_s"] * stats["seconds"], stats["seconds"],
                               n_units, startup(cfg.cost.throughput, "generate", gpus))
            out["measured"]["generate"][label] = {
                "model": teacher.model, "engine": teacher.engine.kind, "gpu": gpus > 0,
                "tokens_per_response": tokens / rows, "acceptance": curated["acceptance_rate"]
            } | ({"tokens_per_s_per_unit": rate} if rate else {})
        except READ_ERRORS as e:
            log.warning("cost: no actual generation of teacher %s (%r)", label, e)
        out["generate"][label] = _pair(generation_cost(cfg, label, measured), actual)


def _average(into: dict[str, dict[str, Any]], key: str, values: dict[str, Any]) -> None:
    """Per student, the mean over its trials of each measured value."""
    old = into.get(key, {})
    n = old.get("trials", 0)
    into[key] = old | {k: (old[k] * n + v) / (n + 1) if isinstance(v, float) and k in old else v
                       for k, v in values.items() if v is not None} | {"trials": n + 1}


def compare(cfg: SweepConfig, summary: dict[str, Any], student_paths: dict[str, Path],
            teachers: dict[str, TeacherRecord], configs: dict[str, SweepConfig]) -> dict[str, Any]:
    """Estimate and actual, per teacher (``teachers``: what the upstream stages made) and per
    trial of the summary (``configs``: each one's own config, by name), and what was measured.
    Never raises on a missing file (a trial that failed or never ran has no actual): the
    summary is written whatever this finds."""
    from transformers import AutoTokenizer

    measured, chars = calibration(cfg), problem_chars(cfg)
    out: dict[str, Any] = {"generate": {}, "train": {}, "evaluate": {},
                           "measured": {"generate": {}, "train": {}, "evaluate": {}}}
    _teachers(cfg, teachers, measured, out)
    root, inv = cfg.root, summary["invocation"]
    tokenizers: dict[str, Any] = {}
    prefixes: dict[str, dict[str, int]] = {}
    for row in summary["trials"]:
        name, student = row["trial"], row["student"]
        one = configs[name]
        est_train, est_eval = trial_costs(one, chars, measured)
        train = evaluate = None
        trial_dir, train_dir = root.trial(inv, name), root.train_run(inv, name)
        try:
            # only for a trial that trained: a student that cannot load has no tokenizer either
            if student not in tokenizers and any(train_dir.glob("checkpoint_*/history.json")):
                tokenizers[student] = AutoTokenizer.from_pretrained(student_paths[student])
            train = trained(one, trial_dir, train_dir, tokenizers.get(student),
                            prefixes.setdefault(student, {}))
            if train is not None:
                train["seconds"] = row.get("time_train_s") or train["seconds"]
                gpu = one.resources.gpus_per_train_worker > 0
                _average(out["measured"]["train"], student, {
                    "gpu": gpu, "tokens_per_s_per_worker": train["tokens_per_s_per_worker"]})
            if (root.trial_eval(inv, name) / METRICS_FILE).is_file():
                metrics = json.loads((root.trial_eval(inv, name) / METRICS_FILE).read_text())
                tokens, rows = generated(Path(metrics["generations"]) / "data")
                evaluate = {"tokens": tokens, "seconds": row.get("time_eval_s")
                            or metrics["generation"]["seconds"]}
                gen, (n_units, gpus) = metrics["generation"], units(one.evaluate)
                _average(out["measured"]["evaluate"], student, {
                    "gpu": gpus > 0, "engine": one.evaluate.engine.kind,
                    "tokens_per_response": tokens / rows, "tokens_per_s_per_unit": steady_rate(
                        gen["tokens_per_s"] * gen["seconds"], gen["seconds"], n_units,
                        startup(one.cost.throughput, "evaluate", gpus))})
        except READ_ERRORS as e:
            log.warning("cost: no actual tokens of trial %s (%r)", name, e)
        out["train"][name], out["evaluate"][name] = (_pair(est_train, train),
                                                     _pair(est_eval, evaluate))
    return out


def _line(what: str, pair: dict[str, Any]) -> str:
    est, act = pair["estimate"], pair["actual"]
    head = f"  {what}: {human(est['tokens'])}"
    guess = about(est["seconds"])
    if act is None:
        return f"{head} tokens, {guess} -> not measured"
    off = (f" ({100 * (act['tokens'] / est['tokens'] - 1):+.0f}%)" if est["tokens"] else "")
    reused = " (reused: an earlier run's time)" if act.get("cached") else ""
    return (f"{head} -> {human(act['tokens'])} tokens{off}, {guess} -> "
            f"{duration(act['seconds'])}{reused}")


def format_comparison(cost: dict[str, Any]) -> str:
    """The summary's lines: estimate -> actual, tokens and time, per teacher and trial."""
    lines = ["cost, estimate -> actual:"]
    lines += [_line(f"generate {label}", p) for label, p in cost["generate"].items()]
    for stage in ("train", "evaluate"):
        lines += [_line(f"{stage} {trial}", p) for trial, p in cost[stage].items()]
    return "\n".join(lines)
