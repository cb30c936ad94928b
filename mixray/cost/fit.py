"""Whether a sweep fits its GPUs' memory: the lines `--dry-run` prints (per student, one
training rank's need part by part; per vLLM engine, one tensor-parallel rank's), and what is
refused before any work (a need over the GPU's memory) or warned about (within 10% of it).

The GPU memory of a node type has one source: the `gpu_memory_gib` resource its node type
declares in the cluster file (clusters/aws.yaml, gcp.yaml, kuberay.yaml), read from the file
by `--dry-run --cluster FILE` and from the running cluster by the real run
(`mixray.cluster.gpu_memory`). Where it is not known, the needs are printed without a verdict.
The arithmetic is `mixray.cost.memory`'s; the shapes `mixray.cost.shape`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mixray.config import SweepConfig
from mixray.cost.memory import WARN_MARGIN, engine_memory, rank_memory
from mixray.cost.shape import Shape, model_shape
from mixray.generate.config import ModelRun, VLLMEngineConfig
from mixray.train.config import TrainConfig


@dataclass
class Fit:
    lines: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def fit(cfg: SweepConfig, gpu_gib: dict[str, float], where: str) -> Fit:
    """The memory preview of ``cfg`` against ``gpu_gib`` (node type -> GiB per GPU, from
    ``where``: the cluster file or the running cluster)."""
    out = Fit()
    t, nt = cfg.train, cfg.resources.node_types
    trainer = gpu_gib.get(nt.train_workers or "") if cfg.resources.gpus_per_train_worker else None
    out.lines.append(
        f"memory   : one training rank (ZeRO-{t.zero_stage}, {t.dtype}, {t.num_workers} workers, "
        f"{t.micro_batch_size} x {t.max_length} tokens, gradient checkpointing "
        f"{'on' if t.gradient_checkpointing else 'off'}, {where}):")
    for student in cfg.students:
        _student(out, student, t, trainer, nt.train_workers, where)
    evaluation = gpu_gib.get(nt.evaluation or "")
    runs: list[tuple[str, str, ModelRun, float | None, str | None]] = [
        (f"evaluation of {s}", s, cfg.evaluate, evaluation, nt.evaluation) for s in cfg.students]
    if (judge := cfg.evaluate.judge) is not None and judge.model is not None:
        runs.append(("judge", judge.model, judge, evaluation, nt.evaluation))
    teachers = gpu_gib.get(nt.teachers or "")
    runs += [(f"teacher {label!r}", t.model, t, teachers, nt.teachers)
             for label, t in cfg.teachers.items() if t.model is not None]
    for what, model, run, have, node_type in runs:
        if isinstance(run.engine, VLLMEngineConfig) and run.gpus > 0:
            _engine(out, what, model, run.engine, have, node_type, where)
    return out


def _sized(out: Fit, what: str, model: str) -> Shape | None:
    """The model's shape, or None with a line saying why it cannot be sized (no verdict then:
    a model spec that cannot resolve at all is check_inputs' to refuse)."""
    try:
        return model_shape(model)
    except ValueError as e:
        out.lines.append(f"  {what}: not sized ({e})")
        return None


def _student(out: Fit, student: str, t: TrainConfig, have: float | None,
             node_type: str | None, where: str) -> None:
    if (shape := _sized(out, student, student)) is None:
        return
    r = rank_memory(shape, t)
    other = "on" if not t.gradient_checkpointing else "off"
    out.lines.append(
        f"  {student}: weights+gradients+optimizer {r.states:.1f} + activations "
        f"{r.activations:.1f} (checkpointing {other}: {r.activations_other:.1f}) + loss chunk "
        f"{r.loss:.1f} + overhead {r.overhead:.1f} = {r.total:.1f} GiB{_of(have, node_type)} "
        f"[{shape.source}]")
    if have is None:
        return
    need = (f"student {student!r}: one training rank needs {r.total:.1f} GiB (train.max_length "
            f"{t.max_length} x train.micro_batch_size {t.micro_batch_size}, train.zero_stage "
            f"{t.zero_stage}, train.dtype {t.dtype}, train.num_workers {t.num_workers}, "
            f"train.gradient_checkpointing {str(t.gradient_checkpointing).lower()}) and each GPU "
            f"of node type {node_type} has {have:.1f} GiB ({where})")
    if r.total > have:
        out.refused.append(f"{need}; it would fit with {_remedies(shape, t, have)}")
    elif r.total > (1 - WARN_MARGIN) * have:
        out.warnings.append(f"{need}: within {WARN_MARGIN:.0%}")


def _remedies(shape: Shape, t: TrainConfig, have: float) -> str:
    """What would make one rank fit ``have`` GiB, each change alone, with its need."""
    tries = []
    if not t.gradient_checkpointing:
        tries.append(("train.gradient_checkpointing: true", {"gradient_checkpointing": True}))
    if t.zero_stage < 3:
        tries.append(("train.zero_stage: 3", {"zero_stage": 3}))
    tries.append((f"train.num_workers: {2 * t.num_workers}", {"num_workers": 2 * t.num_workers}))
    fits = []
    for what, change in tries:
        need = rank_memory(shape, t.model_copy(update=change)).total
        if need <= have:
            fits.append(f"{what} ({need:.1f} GiB)")
    length = t.max_length // 2
    while length >= 512 and rank_memory(shape, t.model_copy(update={"max_length": length})
                                        ).total > have:
        length //= 2
    if length >= 512:
        fits.append(f"train.max_length: {length} (cuts long rows)")
    return "; or ".join(fits) or "none of gradient checkpointing, ZeRO-3, twice the workers or " \
        "a shorter max_length alone: a larger GPU, or LoRA (train.lora)"


def _engine(out: Fit, what: str, model: str, engine: VLLMEngineConfig, have: float | None,
            node_type: str | None, where: str) -> None:
    if (shape := _sized(out, what, model)) is None:
        return
    length = engine.max_model_len or 4096
    need = engine_memory(shape, engine.tensor_parallel_size, length)
    usable = None if have is None else engine.gpu_memory_utilization * have
    said = "" if engine.max_model_len else " (max_model_len omitted: 4096 assumed)"
    out.lines.append(f"  {what}: vLLM, per tensor-parallel rank of {engine.tensor_parallel_size}: "
                     f"{need:.1f} GiB at max_model_len {length}{said}"
                     + ("" if usable is None else f" of {usable:.1f} GiB (gpu_memory_utilization "
                        f"{engine.gpu_memory_utilization:g} x {have:.1f}, {node_type})"))
    if usable is not None and need > usable:
        out.refused.append(
            f"{what} ({model}): one vLLM rank needs {need:.1f} GiB for its weights and one "
            f"{length}-token sequence's KV cache, and gets {usable:.1f} GiB of a GPU of node type "
            f"{node_type} ({where}); raise engine.tensor_parallel_size (now "
            f"{engine.tensor_parallel_size}) or lower engine.max_model_len")


def _of(have: float | None, node_type: str | None) -> str:
    return "" if have is None else f" of {have:.1f} GiB ({node_type})"
