"""The `problems` section: where the teachers' problems and the held-out problems come from.

A source is a reasoning-gym task (seeded, offline; the default) or a dataset read through
`mixray.problems.datasets`. The problems stage (`mixray.problems.stage`) turns it into Parquet.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mixray.problems.datasets import LOCAL_SUFFIXES, AnswerTransform, FieldMap
from mixray.schema import Strict, count_or_all

# Keys of earlier sweep files, refused with where they went (a file must say what it means).
MOVED_KEYS = {
    "task": "problems.task: moved to problems.source: {kind: reasoning_gym, task: ...}",
    "task_args": "problems.task_args: moved to problems.source: "
                 "{kind: reasoning_gym, task: ..., task_args: ...}",
}


def known_reasoning_gym_task(task: str) -> str:
    """A reasoning-gym dataset name, or a ValueError naming similar ones."""
    import reasoning_gym  # noqa: F401  (imported for its registry)
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        close = sorted(n for n in DATASETS if task.split("_")[0] in n)[:8]
        raise ValueError(f"unknown reasoning-gym task {task!r}; similar: {close or 'none'}")
    return task


class ReasoningGymSource(Strict):
    """Seeded problems from a reasoning-gym generator, offline. The held-out problems come from
    another seed and share no problem text with the training problems."""

    kind: Literal["reasoning_gym"] = "reasoning_gym"
    task: str = Field("basic_arithmetic", description="A reasoning-gym dataset name.")
    task_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the reasoning-gym dataset."
    )

    _known_task = field_validator("task")(known_reasoning_gym_task)


def _check_source_path(path: str | None) -> str | None:
    if path is not None and not path.startswith("hf:") and not path.endswith(LOCAL_SUFFIXES):
        raise ValueError(f"{path!r} is neither 'hf:owner/name' nor a local file ending in "
                         f"{', '.join(LOCAL_SUFFIXES)}")
    return path


class DatasetSource(Strict):
    """Problems from a dataset: a hub dataset (``hf:owner/name``; needs the `datasets` package
    and the hub) or a local jsonl/json/parquet file, read through a field mapping and an answer
    transform (mixray/problems/datasets.py). Unusable records (no problem, no answer, a repeated
    id or problem text) are counted and written aside with their reason.

    Held-out problems come from ``eval_split`` / ``eval_path`` when one is given; otherwise
    ``problems.eval_size`` of them are carved out of the training source, drawn by
    ``problems.seed``. Either way no held-out problem text is also a training problem.
    """

    kind: Literal["dataset"]
    path: str = Field(description="'hf:owner/name' or a local .jsonl/.json/.parquet file.")
    config: str | None = Field(None, description="Hub dataset config (subset).")
    split: str = Field("train", description="Hub split of the training problems.")
    fields: FieldMap = Field(
        default_factory=FieldMap, description="Columns holding problem, answer and (optional) id."
    )
    answer_transform: AnswerTransform = Field(
        "as_is", description="How the gold answer is read from its column: as_is | last_boxed "
        "(MATH solutions) | after_hashes (GSM8K) | join_list.",
    )
    eval_split: str | None = Field(
        None, description="Hub split of the held-out problems (e.g. test). With eval_path also "
        "omitted, held-out problems are carved out of the training source by problems.seed.",
    )
    eval_path: str | None = Field(
        None, description="Another source of held-out problems ('hf:...' or a local file, read "
        "with the same fields and transform).",
    )

    _paths = field_validator("path", "eval_path")(_check_source_path)

    @model_validator(mode="after")
    def _eval_source(self) -> DatasetSource:
        if self.eval_split is not None and not (self.eval_path or self.path).startswith("hf:"):
            raise ValueError("eval_split names a hub split, but the held-out source is a local "
                             "file (which has no splits); give eval_path instead")
        if self.separate_eval and self.eval_source == (self.path, self.split):
            raise ValueError("the held-out source is the training source; leave eval_split and "
                             "eval_path out to carve held-out problems out of it")
        return self

    @property
    def separate_eval(self) -> bool:
        """Whether held-out problems come from their own split or file (else: carved)."""
        return self.eval_split is not None or self.eval_path is not None

    @property
    def eval_source(self) -> tuple[str, str]:
        """(path, split) of the held-out problems' source."""
        return self.eval_path or self.path, self.eval_split or self.split


ProblemSource = Annotated[ReasoningGymSource | DatasetSource, Field(discriminator="kind")]


class DecontaminateConfig(Strict):
    """Training problems that share text with an evaluation benchmark's problems
    (`mixray.problems.decontaminate`): open-r1's rule (after s1): a shared run of ``ngram``
    words of the normalised texts, or, for texts shorter than that, the same whole text."""

    mode: Literal["drop", "error", "off"] = Field(
        "drop", description="drop: overlapping training problems are set aside and counted per "
        "benchmark; error: any overlap stops the sweep before generation, naming them; off: no "
        "check (scores may then be inflated by memorised problems).")
    ngram: int = Field(8, ge=1, description="Words in a shared run that makes an overlap "
                       "(open-r1 and s1 use 8).")


class ProblemsConfig(Strict):
    """Training problems for the teachers and held-out problems for evaluation.

    ``source`` is a reasoning-gym task (the default: seeded, offline) or a dataset.
    """

    source: ProblemSource = Field(
        default_factory=ReasoningGymSource,
        description="{kind: reasoning_gym, task, task_args} | {kind: dataset, path, fields, ...}.",
    )
    train_size: int | Literal["all"] = Field(
        64, description="Problems the teachers solve; 'all' (dataset sources only): every "
        "usable record not held out.",
    )
    eval_size: int | Literal["all"] = Field(
        32, description="Held-out problems the students are scored on; 'all' only with a "
        "separate held-out source (source.eval_split or source.eval_path).",
    )
    seed: int = Field(0, description="reasoning-gym's generator seed; for a dataset, which "
                      "records are drawn and held out.")
    decontaminate: DecontaminateConfig = Field(
        default_factory=DecontaminateConfig, description="Training problems overlapping any "
        "evaluation benchmark: {mode: drop | error | off, ngram: 8}. Its own stage and key: "
        "the problems' key does not hold it.")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Refuse the keys of earlier files by where they went, rather than as unknown keys."""
        if not isinstance(data, dict):
            return data
        moved = [MOVED_KEYS[k] for k in MOVED_KEYS if k in data]
        if isinstance(data.get("source"), str):
            moved.append(f"problems.source: a mapping, not a name: write problems.source: "
                         f"{{kind: {data['source']}, ...}}")
        if moved:
            raise ValueError("; ".join(moved))
        return data

    @field_validator("train_size", "eval_size")
    @classmethod
    def _positive(cls, size: int | str) -> int | str:
        return count_or_all(size)

    @model_validator(mode="after")
    def _sizes_fit_source(self) -> ProblemsConfig:
        if isinstance(self.source, ReasoningGymSource):
            alls = [n for n in ("train_size", "eval_size") if getattr(self, n) == "all"]
            if alls:
                raise ValueError(f"problems.{alls[0]}: 'all' needs a dataset source; a "
                                 "reasoning-gym task generates as many problems as asked")
        elif self.eval_size == "all" and not self.source.separate_eval:
            raise ValueError("problems.eval_size 'all' needs a separate held-out source "
                             "(source.eval_split or source.eval_path); held-out problems carved "
                             "out of the training source need a count")
        return self

    def describe(self) -> str:
        """One line for plans and logs."""
        s = self.source
        where = (f"reasoning-gym {s.task!r} (seed {self.seed})" if isinstance(s, ReasoningGymSource)
                 else f"{s.path}" + (f" [{s.split}]" if s.path.startswith("hf:") else "")
                 + (f", held out from {s.eval_source[0]} [{s.eval_source[1]}]"
                    if s.separate_eval else f", held out by seed {self.seed}"))
        return f"{self.train_size} train + {self.eval_size} held-out from {where}"
