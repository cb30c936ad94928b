"""The loop's arguments: the train section reaches the loop whole (no field can be dropped on the
way), its record is one flat mapping, engine and loop do not import each other, and the tests'
crash hook is a Reporter wrapper that stays out of the way unless asked for."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from contextlib import nullcontext
from pathlib import Path

from mixray.train import faults
from mixray.train.args import LoopArgs
from mixray.train.config import LoraConfig, TrainConfig

TRAIN_DIR = Path(__file__).resolve().parents[2] / "mixray" / "train"

# A value other than the default for every TrainConfig field: a field added to TrainConfig must be
# added here too (test_every_field_has_a_non_default_value), and is then checked to reach the loop.
NON_DEFAULT = {
    "zero_stage": 3, "dtype": "bf16", "num_workers": 3, "micro_batch_size": 1,
    "global_batch_size": 12, "gradient_accumulation_steps": 4, "max_steps": None, "epochs": 1.5,
    "lr": 3e-4, "lr_schedule": "constant", "warmup_ratio": 0.1, "weight_decay": 0.01,
    "adam_betas": (0.8, 0.95), "max_grad_norm": 0.5, "gradient_checkpointing": True,
    "max_length": 1024, "overlong": "drop", "max_dropped_fraction": 0.2, "packing": "greedy",
    "system_prompt": "Think step by step.", "responses": "as_written", "checkpoint_every": 5,
    "max_failures": 1, "keep_checkpoints": "all", "eval_every": 3, "seed": 7,
    "lora": LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj"]),
}


def _args(t: TrainConfig) -> LoopArgs:
    return LoopArgs(train=t, model_path="m", manifest_path="x.parquet", torch_threads=2,
                    validation_path="v.parquet", eval_steps=(2, 4))


def test_every_field_has_a_non_default_value() -> None:
    assert set(NON_DEFAULT) == set(TrainConfig.model_fields)
    default = TrainConfig()
    assert [k for k, v in NON_DEFAULT.items() if getattr(default, k) == v] == []


def test_the_train_section_reaches_the_loop_whole() -> None:
    t = TrainConfig(**NON_DEFAULT)
    a = _args(t)
    assert a.train is t
    for name, value in NON_DEFAULT.items():
        assert getattr(a.train, name) == value, name
    assert a.train.accumulation == 4
    # under Ray Train the args travel to the workers pickled: still whole there
    assert pickle.loads(pickle.dumps(a)) == a


def test_loop_args_copy_no_train_field_and_hold_no_test_hook() -> None:
    own = {f.name for f in dataclasses.fields(LoopArgs)}
    assert own == {"train", "model_path", "manifest_path", "torch_threads", "validation_path",
                   "eval_steps"}
    assert not own & set(TrainConfig.model_fields)


def test_record_is_one_flat_json_mapping() -> None:
    t = TrainConfig(**NON_DEFAULT)
    record = _args(t).record()
    assert set(TrainConfig.model_fields) <= set(record)
    assert record["adam_betas"] == [0.8, 0.95] and record["accumulation"] == 4
    assert record["lora"] == t.lora.model_dump()
    assert (record["model_path"], record["eval_steps"]) == ("m", [2, 4])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module}


def test_engine_and_loop_do_not_import_each_other() -> None:
    assert "mixray.train.loop" not in _imports(TRAIN_DIR / "engine.py")
    assert "mixray.train.engine" in _imports(TRAIN_DIR / "loop.py")
    assert _imports(TRAIN_DIR / "args.py") == {"__future__", "dataclasses", "mixray.train.config"}


class _Recorder:
    def __init__(self) -> None:
        self.reports: list[int] = []

    def latest_checkpoint(self):
        return nullcontext(None)

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        self.reports.append(metrics["step"])


def test_the_crash_hook_is_off_unless_the_environment_asks(tmp_path) -> None:
    inner = _Recorder()
    assert faults.from_env(inner, env={}) is inner
    assert faults.from_env(inner, env={faults.CRASH_ENV: ""}) is inner
    hooked = faults.from_env(inner, env={faults.CRASH_ENV: f"2:{tmp_path / 'crashed'}"})
    assert isinstance(hooked, faults.CrashOnce)
    assert (hooked.after_step, hooked.marker) == (2, tmp_path / "crashed")


def test_the_crash_hook_passes_reports_on_and_spares_other_ranks(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(faults.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(faults.dist, "get_world_size", lambda: 2)
    inner = _Recorder()
    hooked = faults.CrashOnce(inner, after_step=2, marker=tmp_path / "crashed")
    with hooked.latest_checkpoint() as d:
        assert d is None
    for step in (1, 2, 3):
        hooked.report({"step": step})
    assert inner.reports == [1, 2, 3]
    assert not (tmp_path / "crashed").exists()  # rank 0 of 2: only the last rank dies

