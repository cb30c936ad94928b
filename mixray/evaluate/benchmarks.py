"""Benchmarks: typed specs, the registry of the paper's benchmarks, and loading them into problems.

A benchmark spec is one of four kinds (the ``kind`` key of a sweep file's ``evaluate.benchmarks``):

``heldout``        the sweep's held-out problems (or any file in the problems schema, ``path``).
``registry``       one of the paper's benchmarks by name (`REGISTRY`): from the Hugging Face hub,
                   or from a local jsonl/parquet copy with the hub's columns (``path``).
``dataset``        any hub dataset (``path: hf:owner/name``, pinned: ``hf:owner/name@revision``)
                   or local jsonl/json/parquet file, with a field mapping, a gold-answer
                   transform and an optional expected size.
``reasoning_gym``  an offline set from a reasoning-gym task, seeded away from training seeds and
                   checked to share no problem text with the training problems.

Loading turns a spec into `LoadedBenchmark` rows ``{problem_id, problem, answer}``; files and hub
datasets are read, mapped and checked by `mixray.problems.datasets`. Records that cannot be used
(a missing field, no answer where the transform needs one, a duplicate id) are never dropped
silently: each comes back as a bad row with its reason, and the caller writes them aside and
counts them. A registry benchmark's size is checked on load, so a truncated download or a wrong
split fails loudly instead of shifting accuracies. Given a ``cache`` (a sweep's
``<run_root>/datasets``), a hub dataset is read from the hub once and from the run root after
(`mixray.problems.datasets.read_hub_cached`), so trials on worker nodes never download it.

Shorthands (the CLI's ``--benchmarks`` and strings in a sweep file) are parsed by
`parse_benchmark`: ``math500``, ``gsm8k=/data/gsm8k.parquet``, ``heldout``,
``heldout=runs/.../eval.parquet``, ``rg:basic_arithmetic[:SIZE]``, ``hf:owner/name``,
``mine=/data/mine.jsonl`` or a bare ``/data/mine.jsonl``.

This module imports no Ray: `mixray.evaluate.config` reads these specs from a sweep file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from mixray.grading.grade import AnswerFormat
from mixray.problems.config import known_reasoning_gym_task
from mixray.problems.datasets import (
    LOCAL_SUFFIXES,
    AnswerTransform,
    FieldMap,
    parse_hub_path,
    read_local,
    read_records,
    source_name,
    usable_rows,
)
from mixray.schema import Strict

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9_-]+$"  # becomes part of MLflow metric names: eval.<name>.accuracy
# Default seed of reasoning-gym sets: far from sweep training seeds (small integers) and from the
# sweep's held-out seeds (seed + 1_000_003), so the generators never replay those streams.
EVAL_RG_SEED = 2_000_003


def _check_prompt(prompt: str | None) -> str | None:
    if prompt is not None and "{problem}" not in prompt:
        raise ValueError("a benchmark prompt template must contain the field {problem}")
    return prompt


class HeldOutBenchmark(Strict):
    """The sweep's held-out problems (problems schema: problem_id, problem, answer)."""

    kind: Literal["heldout"] = "heldout"
    name: str = Field("heldout", pattern=NAME_PATTERN)
    path: str | None = Field(
        None, description="A problems file (parquet/jsonl); omitted: the sweep's held-out set.")
    answer_format: AnswerFormat = "lenient"
    prompt: str | None = Field(None, description="User-turn template; omitted: evaluate.prompt.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N problems.")

    _prompt = field_validator("prompt")(_check_prompt)


class DatasetBenchmark(Strict):
    """Any dataset: a hub dataset (``hf:owner/name``) or a local jsonl/json/parquet file."""

    kind: Literal["dataset"] = "dataset"
    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(description="'hf:owner/name[@revision]' (needs the datasets package) or "
                      "a local file.")
    config: str | None = Field(None, description="Hub dataset config (subset).")
    split: str = Field("test", description="Hub dataset split.")
    fields: FieldMap = FieldMap()
    answer_transform: AnswerTransform = "as_is"
    answer_format: AnswerFormat = "boxed"
    prompt: str | None = Field(None, description="User-turn template; omitted: evaluate.prompt.")
    expected_size: int | None = Field(
        None, ge=1,
        description="Records the source must hold (bad ones included); checked on load.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N problems.")

    _prompt = field_validator("prompt")(_check_prompt)

    @field_validator("path")
    @classmethod
    def _known_source(cls, path: str) -> str:
        if path.startswith("hf:"):
            parse_hub_path(path)  # a malformed @revision fails here, not inside a trial
        elif not path.endswith(LOCAL_SUFFIXES):
            raise ValueError(f"path {path!r} is neither 'hf:owner/name' nor a local file ending "
                             f"in {', '.join(LOCAL_SUFFIXES)}")
        return path


# The paper's benchmarks (PAPER.md, "Evaluation"). Hub ids, splits and sizes are those of the
# public copies most harnesses load (lighteval, Qwen2.5-Math's evaluation, simple-evals).
REGISTRY: dict[str, DatasetBenchmark] = {
    b.name: b
    for b in [
        DatasetBenchmark(name="math500", path="hf:HuggingFaceH4/MATH-500", split="test",
                         expected_size=500),
        # The full MATH test split; gold answers are the last \boxed{} of each worked solution.
        DatasetBenchmark(name="math", path="hf:DigitalLearningGmbH/MATH-lighteval",
                         config="default", split="test",
                         fields=FieldMap(problem="problem", answer="solution"),
                         answer_transform="last_boxed", expected_size=5000),
        # The paper gives GSM8K the raw question and scores the last number.
        DatasetBenchmark(name="gsm8k", path="hf:openai/gsm8k", config="main", split="test",
                         fields=FieldMap(problem="question", answer="answer"),
                         answer_transform="after_hashes", answer_format="last_number",
                         prompt="{problem}", expected_size=1319),
        DatasetBenchmark(name="amc2023", path="hf:math-ai/amc23", split="test",
                         fields=FieldMap(problem="question", answer="answer"), expected_size=40),
        DatasetBenchmark(name="aime2024", path="hf:HuggingFaceH4/aime_2024", split="train",
                         expected_size=30),
        # English, text-only, open-ended competition maths (OE_TO_maths_en_COMP), 675 problems.
        DatasetBenchmark(name="olympiadbench", path="hf:math-ai/olympiadbench", split="test",
                         fields=FieldMap(problem="question", answer="final_answer"),
                         answer_transform="join_list", expected_size=675),
    ]
}
RegistryName = Literal["math500", "math", "gsm8k", "amc2023", "aime2024", "olympiadbench"]
assert set(REGISTRY) == set(RegistryName.__args__), "RegistryName must list the registry"


class RegistryBenchmark(Strict):
    """One of the paper's benchmarks by name: its source, fields, scoring and size from REGISTRY."""

    kind: Literal["registry"] = "registry"
    name: RegistryName
    path: str | None = Field(
        None,
        description="A local jsonl/json/parquet copy with the hub's columns; omitted: the hub.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N problems "
                              "(the full set's size is still checked).")

    @field_validator("path")
    @classmethod
    def _local_file(cls, path: str | None) -> str | None:
        if path is not None and not path.endswith(LOCAL_SUFFIXES):
            raise ValueError(f"path {path!r} must be a local file ending in "
                             f"{', '.join(LOCAL_SUFFIXES)}")
        return path

    def resolve(self) -> DatasetBenchmark:
        base = REGISTRY[self.name]
        return base.model_copy(update={"path": self.path or base.path, "limit": self.limit})


class ReasoningGymBenchmark(Strict):
    """An offline set from a reasoning-gym task (no network). Problems whose text appears among
    the training problems are skipped, so the set never scores a trained-on problem."""

    kind: Literal["reasoning_gym"] = "reasoning_gym"
    name: str = Field(pattern=NAME_PATTERN, description="Default: rg-<task>.")
    task: str = Field(description="A reasoning-gym dataset name.")
    task_args: dict[str, Any] = Field(default_factory=dict)
    size: int = Field(32, ge=1)
    seed: int = Field(EVAL_RG_SEED, description="Keep it away from the training problems' seed.")
    answer_format: AnswerFormat = "lenient"
    prompt: str | None = Field(None, description="User-turn template; omitted: evaluate.prompt.")

    _prompt = field_validator("prompt")(_check_prompt)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        task = data.get("task") if isinstance(data, dict) else None
        if isinstance(task, str) and data.get("name") is None:
            data = data | {"name": f"rg-{task}"}
        return data

    _known_task = field_validator("task")(known_reasoning_gym_task)


def parse_benchmark(value: Any) -> Any:
    """A shorthand string -> a spec dict; anything else is passed on to validation unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "heldout":
        return {"kind": "heldout"}
    if text.startswith("rg:"):
        task, _, size = text[3:].partition(":")
        if not task or (size and not size.isdigit()):
            raise ValueError(f"{text!r}: a reasoning-gym set is rg:TASK or rg:TASK:SIZE")
        return {"kind": "reasoning_gym", "task": task} | ({"size": int(size)} if size else {})
    if text.startswith("hf:"):
        dataset = text[3:].partition("@")[0]  # a pinned revision is not part of the name
        return {"kind": "dataset", "name": _name_from(dataset.rsplit("/", 1)[-1]), "path": text}
    name, eq, path = text.partition("=")
    if eq:
        name, path = name.strip(), path.strip()
        if name == "heldout":
            return {"kind": "heldout", "path": path}
        if name in REGISTRY:
            return {"kind": "registry", "name": name, "path": path}
        return {"kind": "dataset", "name": name, "path": path}
    if text in REGISTRY:
        return {"kind": "registry", "name": text}
    if text.endswith(LOCAL_SUFFIXES):
        return {"kind": "dataset", "name": _name_from(Path(text).stem), "path": text}
    raise ValueError(
        f"unknown benchmark {text!r}: give a registry name ({', '.join(REGISTRY)}), NAME=PATH, "
        "heldout[=PATH], rg:TASK[:SIZE], hf:owner/name, a .jsonl/.json/.parquet file, or a "
        "mapping with a 'kind'")


def _name_from(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "benchmark"


BenchmarkSpec = Annotated[
    HeldOutBenchmark | RegistryBenchmark | DatasetBenchmark | ReasoningGymBenchmark,
    Field(discriminator="kind"),
    BeforeValidator(parse_benchmark),
]


# --- Loading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedBenchmark:
    """A benchmark ready to evaluate: its problems, the records it could not use, how to score."""

    name: str
    rows: list[dict[str, str]]  # problem_id, problem, answer
    bad_rows: list[dict[str, Any]] = field(default_factory=list)  # benchmark, index, reason, record
    answer_format: AnswerFormat = "lenient"
    prompt: str | None = None  # None: the evaluation's default prompt
    source: str = ""


def load_benchmark(spec: Any, *, heldout: Path | None = None, exclude: Iterable[str] = (),
                   cache: Path | None = None) -> LoadedBenchmark:
    """Load one benchmark spec. ``heldout`` is the sweep's held-out problems file (for a
    ``heldout`` spec without a path); ``exclude`` holds training problem texts that a
    reasoning-gym set must not contain; ``cache`` is where hub datasets are read through
    (``<run_root>/datasets``; None: from the hub every time)."""
    if isinstance(spec, RegistryBenchmark):
        spec = spec.resolve()
    if isinstance(spec, ReasoningGymBenchmark):
        return _load_reasoning_gym(spec, set(exclude))
    if isinstance(spec, HeldOutBenchmark):
        path = Path(spec.path) if spec.path else heldout
        if path is None:
            raise ValueError("the 'heldout' benchmark is a sweep's held-out set; outside a sweep "
                             "give its file: heldout=PATH")
        records = read_local(path)
        fields, transform, expected, source = FieldMap(id="problem_id"), "as_is", None, str(path)
    elif isinstance(spec, DatasetBenchmark):
        records = read_records(spec.path, spec.config, spec.split, cache=cache)
        fields, transform, expected = spec.fields, spec.answer_transform, spec.expected_size
        source = source_name(spec.path, spec.config, spec.split)
    else:
        raise TypeError(f"not a benchmark spec: {spec!r}")
    rows, bad = usable_rows(spec.name, records, fields, transform, spec.answer_format,
                            source=source, expected_size=expected)
    if spec.limit is not None:
        rows = rows[: spec.limit]
    return LoadedBenchmark(spec.name, rows, bad, spec.answer_format, spec.prompt, source)


def _load_reasoning_gym(spec: ReasoningGymBenchmark, exclude: set[str]) -> LoadedBenchmark:
    import reasoning_gym

    # Twice the size, so problems that coincide with training ones can be skipped and the set
    # still has `size` distinct problems (the sweep's held-out split does the same).
    dataset = reasoning_gym.create_dataset(spec.task, size=spec.size * 2, seed=spec.seed,
                                           **spec.task_args)
    rows, seen, overlap = [], set(), 0
    for i, item in enumerate(dataset):
        problem = str(item["question"])
        if problem in exclude:
            overlap += 1
            continue
        if problem in seen:
            continue
        seen.add(problem)
        rows.append({"problem_id": f"{spec.name}/{spec.seed}/{i}", "problem": problem,
                     "answer": str(item["answer"])})
        if len(rows) == spec.size:
            break
    if len(rows) < spec.size:
        raise ValueError(
            f"benchmark {spec.name!r}: reasoning-gym {spec.task!r} yields only {len(rows)} "
            f"distinct problems outside the training set (asked for {spec.size}); widen "
            "task_args or shrink size")
    if overlap:
        log.info("benchmark %s: skipped %d generated problems that are training problems",
                 spec.name, overlap)
    return LoadedBenchmark(spec.name, rows, [], spec.answer_format, spec.prompt,
                           f"reasoning_gym:{spec.task} seed {spec.seed}")


def read_problem_texts(path: Path) -> set[str]:
    """Problem texts of a problems/benchmark file (its ``problem`` column), for exclusion."""
    records = read_local(path)
    texts = {str(r["problem"]) for r in records if isinstance(r, dict) and r.get("problem")}
    if not texts:
        raise ValueError(f"{path} has no 'problem' column to exclude problems by")
    return texts
