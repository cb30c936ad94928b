"""mixray's own metrics, exported through Ray's metrics agent on every node (`ray.util.metrics`):
what the Grafana dashboard of a sweep (dashboards/mixray-sweep.json) plots beside Ray's own.

Ray exports a metric named ``mixray_x`` to Prometheus as ``ray_mixray_x``, counters as
``ray_mixray_x_total`` (`Spec.exported`), labelled with our tag keys (``teacher``, ``student``,
``trial``, ``experiment``, ``state``) and Ray's own (``NodeAddress``, ``SessionName``,
``WorkerId``, ...). Every process records series of its own (one ``WorkerId`` each), so queries
sum or take the max over them. Measured on Ray 2.60: a counter outlives the process that
recorded it in its node's agent; a gauge is dropped once it has not been set for 2 export
intervals (about 20 s), even while its process lives, so each process sets its gauges' last values
again every `REFRESH_S` (`_Gauges`, a daemon thread): a gauge then leaves Prometheus about 20 s
after its process exits (a finished trial's, a Train worker's).

Who records what: the process that writes a generation's parts (the sweep driver for teachers, a
trial for its evaluation) its rows, tokens and progress (`record_generation`); curation the rows
it accepts (`record_curation`); rank 0 of a Train run every step (`record_train_step`); the Tune
driver its trials' states (`mixray.sweep.callbacks`). A trial's process names itself once
(`set_context`): its evaluation and the Train workers it starts carry its student and trial.

Metric objects are made on first use in each process and kept in module-level caches (`_made`,
`_gauges`); with Ray not initialised (unit tests, the torchrun CLI) every record call is a no-op.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import ray
from ray.util.metrics import Counter, Gauge

# What a trial's process may name itself by: its evaluation and its Train run carry these.
CONTEXT_KEYS = ("student", "trial")
GENERATION_TAGS = ("teacher", *CONTEXT_KEYS)  # teacher: the job's label ("eval", "judge" too)
TRIAL_STATES = ("pending", "running", "paused", "finished", "stopped", "errored")


@dataclass(frozen=True)
class Spec:
    """One metric: its name as recorded, its kind, what it counts, and its tag keys."""

    name: str
    kind: Literal["counter", "gauge"]
    description: str
    tag_keys: tuple[str, ...]

    @property
    def exported(self) -> str:
        """The series name in Prometheus: Ray's ``ray_`` prefix, ``_total`` for counters."""
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("mixray_generate_rows", "counter",
         "(problem, sample) rows generated, failed ones included", GENERATION_TAGS),
    Spec("mixray_generate_failed_rows", "counter",
         "rows the engine failed on (finish_reason error)", GENERATION_TAGS),
    Spec("mixray_generate_truncated_rows", "counter",
         "rows cut at max_new_tokens (finish_reason length)", GENERATION_TAGS),
    Spec("mixray_generate_tokens", "counter", "completion tokens generated", GENERATION_TAGS),
    Spec("mixray_generate_tokens_per_s", "gauge",
         "completion tokens per second of the running generation", GENERATION_TAGS),
    Spec("mixray_generate_progress", "gauge",
         "share (0-1) of the stage's rows done, resumed ones included", GENERATION_TAGS),
    Spec("mixray_curate_rows", "counter", "generated rows curation scored", ("teacher",)),
    Spec("mixray_curate_accepted_rows", "counter",
         "rows graded correct (what rejection sampling keeps)", ("teacher",)),
    Spec("mixray_train_step", "gauge", "optimizer steps done", CONTEXT_KEYS),
    Spec("mixray_train_loss", "gauge", "training loss of the last step", CONTEXT_KEYS),
    Spec("mixray_train_val_loss", "gauge", "validation loss, where measured", CONTEXT_KEYS),
    Spec("mixray_train_tokens_per_s", "gauge",
         "real (non-pad) tokens per second of the last step, all ranks", CONTEXT_KEYS),
    Spec("mixray_tune_trials", "gauge", "trials of a Tune experiment in each state",
         ("experiment", "state")),
)}

# Ray drops a gauge not set for 2 export intervals (2 x 10 s by default); half of one.
REFRESH_S = 5.0
_made: dict[str, Any] = {}  # name -> ray.util.metrics object, this process's
_making = threading.Lock()
_context: dict[str, str] = {}  # this process's student and trial (set_context)


def set_context(**tags: str) -> None:
    """Name this process's work (a trial's: ``student``, ``trial``) in what it records from now
    on, its Train runs' steps included; replaces what was set before."""
    unknown = sorted(set(tags) - set(CONTEXT_KEYS))
    if unknown:
        raise ValueError(f"unknown metric context {unknown}; known: {list(CONTEXT_KEYS)}")
    _context.clear()
    _context.update({k: str(v) for k, v in tags.items()})


def context() -> dict[str, str]:
    """What `set_context` set in this process (empty: a driver's, or nothing named it)."""
    return dict(_context)


def _metric(spec: Spec) -> Any:
    with _making:  # the sweep driver's teachers record from threads of their own
        if spec.name not in _made:
            kind = Counter if spec.kind == "counter" else Gauge
            _made[spec.name] = kind(spec.name, spec.description, spec.tag_keys)
        return _made[spec.name]


class _Gauges:
    """This process's gauges' last values, set again every ``refresh_s`` by a daemon thread
    (started with the first gauge; None: never) so that Ray keeps exporting them while the
    process lives."""

    def __init__(self, refresh_s: float | None = REFRESH_S) -> None:
        self.refresh_s = refresh_s
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def set(self, spec: Spec, value: float, tags: dict[str, str]) -> None:
        _metric(spec).set(value, tags=tags)
        with self.lock:
            self.values[(spec.name, tuple(sorted(tags.items())))] = value
            if self.thread is None and self.refresh_s is not None:
                self.thread = threading.Thread(target=self._refresh_forever, daemon=True,
                                               name="mixray-metrics")
                self.thread.start()

    def refresh(self) -> None:
        """Set every gauge to its last value again."""
        with self.lock:
            values = list(self.values.items())
        for (name, tags), value in values:
            _metric(SPECS[name]).set(value, tags=dict(tags))

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(self.refresh_s)
            if ray.is_initialized():  # not after ray.shutdown()
                self.refresh()


_gauges = _Gauges()


def _record(name: str, value: float, tags: Mapping[str, str]) -> None:
    """Add to a counter or set a gauge; every tag key of the metric gets a value ("" if none)."""
    if not ray.is_initialized():
        return
    spec = SPECS[name]
    full = {k: str(tags.get(k, "")) for k in spec.tag_keys}
    if spec.kind == "gauge":
        _gauges.set(spec, float(value), full)
    elif value >= 0:
        # Counter.inc refuses 0, but a series must exist at 0 (a teacher with no failed rows):
        # else the dashboard shows "no data" and rate() has nothing to start from. _record is the
        # method inc itself ends in, without that check.
        _metric(spec)._record(float(value), tags=full)
    else:
        raise ValueError(f"{name} is a counter: {value} cannot be added to it")


def record_generation(teacher: str, *, rows: int, failed: int, truncated: int,
                      tokens: int) -> None:
    """One batch of a generation written: its rows, failed and truncated rows and tokens."""
    tags = _context | {"teacher": teacher}
    _record("mixray_generate_rows", rows, tags)
    _record("mixray_generate_failed_rows", failed, tags)
    _record("mixray_generate_truncated_rows", truncated, tags)
    _record("mixray_generate_tokens", tokens, tags)


def set_generation_progress(teacher: str, *, done: int, total: int,
                            tokens_per_s: float) -> None:
    """Where a generation stands: rows done of the stage's total, and its throughput so far."""
    tags = _context | {"teacher": teacher}
    _record("mixray_generate_progress", done / total if total else 1.0, tags)
    _record("mixray_generate_tokens_per_s", tokens_per_s, tags)


def record_curation(teacher: str, *, rows: int, accepted: int) -> None:
    """A teacher's generation curated: rows scored and rows graded correct."""
    _record("mixray_curate_rows", rows, {"teacher": teacher})
    _record("mixray_curate_accepted_rows", accepted, {"teacher": teacher})


# The loop's step metrics (train/loop.py) each gauge shows; val_loss only at the steps measured.
TRAIN_GAUGES = {"mixray_train_step": "step", "mixray_train_loss": "train_loss",
                "mixray_train_tokens_per_s": "tokens_per_s", "mixray_train_val_loss": "val_loss"}


def record_train_step(tags: Mapping[str, str], step_metrics: Mapping[str, Any]) -> None:
    """One optimizer step's global metrics, those of `TRAIN_GAUGES` it holds; ``tags``: the
    trial's `context`."""
    for name, key in TRAIN_GAUGES.items():
        if key in step_metrics:
            _record(name, step_metrics[key], tags)


def set_trial_states(experiment: str, counts: Mapping[str, int]) -> None:
    """How many of a Tune experiment's trials are in each of `TRIAL_STATES` (absent: 0)."""
    unknown = sorted(set(counts) - set(TRIAL_STATES))
    if unknown:
        raise ValueError(f"unknown trial states {unknown}; known: {list(TRIAL_STATES)}")
    for state in TRIAL_STATES:
        _record("mixray_tune_trials", counts.get(state, 0),
                {"experiment": experiment, "state": state})
