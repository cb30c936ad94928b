"""Disk use: the run root's size (no symlink followed), its printed form, logged deletes, and what
a finished run keeps of its Ray Train checkpoints (train.keep_checkpoints: resume)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mixray.disk import human_size, remove, tree_size


def _write(path: Path, n_bytes: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * n_bytes)
    return path


def test_tree_size_counts_files_once_and_follows_no_symlink(tmp_path) -> None:
    _write(tmp_path / "a" / "b" / "weights.bin", 1000)
    _write(tmp_path / "a" / "notes.txt", 24)
    cache = _write(tmp_path.parent / f"{tmp_path.name}-cache" / "big.bin", 5000)
    (tmp_path / "linked-model").symlink_to(cache.parent, target_is_directory=True)
    (tmp_path / "linked-file").symlink_to(cache)
    assert tree_size(tmp_path) == 1024
    assert tree_size(tmp_path / "a" / "notes.txt") == 24
    assert tree_size(tmp_path / "linked-model") == 0
    assert tree_size(tmp_path / "missing") == 0


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 KB"),
                                     (2_600_000_000, "2.6 GB"), (5_100_000_000_000, "5.1 TB")])
def test_human_size(n, text) -> None:
    assert human_size(n) == text


def test_remove_frees_bytes_and_logs_a_failed_delete(tmp_path, caplog, monkeypatch) -> None:
    _write(tmp_path / "ckpt" / "optim_states.pt", 300)
    assert remove(tmp_path / "ckpt") == 300 and not (tmp_path / "ckpt").exists()
    assert remove(tmp_path / "ckpt") == 0  # already gone
    stuck = _write(tmp_path / "stuck" / "shard.pt", 10).parent

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("mixray.disk.shutil.rmtree", refuse)
    with caplog.at_level(logging.WARNING, logger="mixray.disk"):
        assert remove(stuck) == 0
    assert stuck.exists() and str(stuck) in caplog.text and "by hand" in caplog.text


def test_a_finished_ray_run_keeps_only_its_student(tmp_path) -> None:
    from mixray.train.launch import keep_only_student

    run = tmp_path / "train" / "inv-tiny-random-long0"
    older, final = run / "checkpoint_2024-01-01_00-00-01", run / "checkpoint_2024-01-01_00-00-02"
    _write(older / "step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", 700)
    _write(final / "step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", 700)
    _write(final / "latest", 5)
    _write(final / "zero_to_fp32.py", 50)
    for name in ("history.json", "params.json", "data_stats.json", "loop_args.json"):
        _write(final / name, 2)
    _write(final / "model" / "model.safetensors", 100)
    _write(run / "checkpoint_manager_snapshot.json", 3)  # Ray's own run state
    assert keep_only_student(final / "model") == 700 + 700 + 5 + 50
    assert sorted(p.name for p in run.iterdir()) == [final.name, "checkpoint_manager_snapshot.json"]
    assert sorted(p.name for p in final.iterdir()) == [
        "data_stats.json", "history.json", "loop_args.json", "model", "params.json"]
    assert tree_size(final / "model") == 100


def test_a_finished_torchrun_out_drops_its_checkpoints_and_reads_as_finished(tmp_path) -> None:
    from mixray.train.__main__ import _drop_checkpoints, finished

    out = tmp_path / "out"
    _write(out / "checkpoints" / "step4" / "mp_rank_00_model_states.pt", 400)
    _write(out / "model" / "model.safetensors", 100)
    _write(out / "history.json", 2)
    assert not finished(out)  # checkpoints left: a rerun resumes from the last one
    _write(out / ".checkpoints-deleted" / "step2" / "stale.pt", 9)  # an earlier delete cut short
    _drop_checkpoints(out / "checkpoints")
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "model"]
    assert finished(out)
    assert not finished(tmp_path / "fresh")


@pytest.mark.parametrize("keep, left", [("resume", ["inv-b"]), ("all", ["inv-a", "inv-b"])])
def test_stopped_trials_lose_their_checkpoints_unless_all_are_kept(tmp_path, keep, left) -> None:
    from mixray.config import load_sweep
    from mixray.search import Trial
    from mixray.sweep.trial import SweepContext
    from mixray.sweep.tune import Outcome, discard_stopped

    sweep = Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml"
    cfg = load_sweep(sweep, [f"run_root={tmp_path}", f"train.keep_checkpoints={keep}"])
    ctx = SweepContext(cfg=cfg, invocation="inv", pools={}, eval_problems="",
                       student_paths={}, parent_run_id="p")
    for name in ("a", "b"):
        _write(ctx.train_run(name) / "checkpoint_x" / "step2" / "optim_states.pt", 10)
    discard_stopped(ctx, [Outcome(Trial(name, "tiny-random", {}), {}, None, stopped, [], cfg)
                          for name, stopped in (("a", True), ("b", False))])
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == left
