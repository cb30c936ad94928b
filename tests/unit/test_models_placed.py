"""models.resolve(spec, into=<run_root>/models): every model lands in the run root, the one thing
a multi-node cluster's nodes share, never as a path into the driver's own cache (issue 15)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest

from mixray import models


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny-random built once for the module (seconds) in a cache of its own, placed in a run
    root; `builds` counts the real builder's calls."""
    base = tmp_path_factory.mktemp("tiny")
    builds = []
    real_build = models._build_tiny
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIXRAY_CACHE", str(base / "cache"))
        mp.setattr(models, "_build_tiny", lambda out: (builds.append(out), real_build(out)))
        into = base / "run" / "models"
        placed = models.resolve(models.TINY, into=into)
        yield {"base": base, "into": into, "placed": placed, "builds": builds, "mp": mp,
               "cached": base / "cache" / "models" / "tiny-random-v2"}


def test_tiny_is_placed_in_the_run_root_with_the_cached_config(tiny) -> None:
    assert tiny["placed"] == tiny["into"] / "tiny-random-v2"
    assert models.is_under(tiny["placed"], tiny["into"])
    placed_cfg = json.loads((tiny["placed"] / "config.json").read_text())
    assert placed_cfg == json.loads((tiny["cached"] / "config.json").read_text())
    assert placed_cfg["model_type"] == "llama"
    assert tiny["builds"] == [tiny["builds"][0]]
    assert not [p for p in tiny["into"].iterdir() if p.name.startswith(".tmp-")]


def test_placed_again_returns_the_same_folder_without_building(tiny, tmp_path) -> None:
    assert models.resolve(models.TINY, into=tiny["into"]) == tiny["placed"]
    # another node: its own empty cache, the same run root -> the placed copy, nothing built
    tiny["mp"].setenv("MIXRAY_CACHE", str(tmp_path / "other-node-cache"))
    try:
        assert models.resolve(models.TINY, into=tiny["into"]) == tiny["placed"]
    finally:
        tiny["mp"].setenv("MIXRAY_CACHE", str(tiny["base"] / "cache"))
    assert len(tiny["builds"]) == 1
    assert not (tmp_path / "other-node-cache").exists()


def test_without_into_the_cache_is_returned_as_before(tiny) -> None:
    assert models.resolve(models.TINY) == tiny["cached"]
    assert len(tiny["builds"]) == 1


def test_placed_files_are_hard_links_on_one_filesystem_never_symlinks(tiny) -> None:
    placed, cached = tiny["placed"], tiny["cached"]
    assert _tree(placed) == _tree(cached)
    files = [p for p in placed.rglob("*") if p.is_file()]
    assert files and not [p for p in placed.rglob("*") if p.is_symlink()]
    assert placed.stat().st_dev == cached.stat().st_dev  # both under one tmp folder
    for p in files:
        assert os.path.samefile(p, cached / p.relative_to(placed)) and p.stat().st_nlink > 1, p


def test_placed_files_are_copied_when_links_fail(tiny, monkeypatch) -> None:
    def no_links(src, dst, *a, **k):  # as across filesystems (a run root on EFS): EXDEV
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    into = tiny["base"] / "other-run" / "models"
    placed = models.resolve(models.TINY, into=into)
    assert placed == into / "tiny-random-v2"
    assert _tree(placed) == _tree(tiny["cached"])
    for p in placed.rglob("*"):
        assert not p.is_symlink() and (p.is_dir() or p.stat().st_nlink == 1), p
    assert len(tiny["builds"]) == 1


def _hf_folder(root: Path, weights: bytes = b"w" * 100) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(weights)
    (root / "sub").mkdir()
    (root / "sub" / "extra.txt").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "lfs-object").write_bytes(weights)  # a clone's second copy of the weights
    return root


def test_a_folder_outside_the_run_root_is_copied_under_local_with_a_fingerprint(
        tmp_path, caplog) -> None:
    src = _hf_folder(tmp_path / "elsewhere" / "my-model")
    into = tmp_path / "run" / "models"
    with caplog.at_level(logging.INFO, logger="mixray.models"):
        placed = models.resolve(str(src), into=into)
    assert placed == into / "local" / f"my-model-{models.fingerprint(src)}"
    assert _tree(placed) == {"config.json": b'{"model_type": "llama"}',
                             "model.safetensors": b"w" * 100, "sub/extra.txt": b"x"}
    for p in placed.rglob("*"):  # copies of the user's files, not links to them
        assert not p.is_symlink() and (p.is_dir() or p.stat().st_nlink == 1), p
    assert "my-model" in caplog.text and "MiB" in caplog.text
    assert models.resolve(str(src), into=into) == placed

    (src / "model.safetensors").write_bytes(b"retrained" * 20)
    again = models.resolve(str(src), into=into)
    assert again != placed and again.parent == placed.parent
    assert (again / "model.safetensors").read_bytes() == b"retrained" * 20
    assert (placed / "model.safetensors").read_bytes() == b"w" * 100  # the old copy untouched


def test_the_fingerprint_follows_names_sizes_and_mtimes(tmp_path) -> None:
    src = _hf_folder(tmp_path / "m")
    first = models.fingerprint(src)
    assert models.fingerprint(src) == first and len(first) == 12
    st = (src / "config.json").stat()
    os.utime(src / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = models.fingerprint(src)
    assert touched != first
    (src / "sub" / "new.txt").write_text("")
    added = models.fingerprint(src)
    assert added != touched
    (src / ".git" / "other").write_text("ignored")  # dot-names are neither copied nor keyed
    assert models.fingerprint(src) == added


def test_symlinked_files_are_placed_as_their_contents(tmp_path) -> None:
    """A folder from an HF cache (snapshots/<commit>/ is links into blobs/) places real files."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "a").write_text('{"model_type": "llama"}')
    snap = tmp_path / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(Path("../../blobs/a"))
    placed = models.resolve(str(snap), into=tmp_path / "run" / "models")
    assert not (placed / "config.json").is_symlink()
    assert (placed / "config.json").read_text() == '{"model_type": "llama"}'


def test_a_folder_already_in_the_run_root_is_used_as_is(tmp_path) -> None:
    run = tmp_path / "run"
    exported = _hf_folder(run / "trials" / "t0" / "model")
    into = run / "models"
    assert models.resolve(str(exported), into=into) == exported.resolve()
    assert not into.exists()
    placed = models.resolve(str(_hf_folder(tmp_path / "outside")), into=into)
    assert models.resolve(str(placed), into=into) == placed.resolve()
    assert models.resolve(str(exported)) == exported.resolve()  # no into: as before


@pytest.mark.parametrize(("spec", "parsed"), [
    ("a/b@rev", ("a/b", "rev")),
    ("a/b", ("a/b", None)),
    ("gpt2", ("gpt2", None)),
    ("a/b@0123abcd", ("a/b", "0123abcd")),
])
def test_hub_specs_parse(spec, parsed) -> None:
    assert models.parse_hub_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["a/b@", "a@b@c", "@rev", "@"])
def test_bad_hub_specs_are_refused_naming_the_spec(spec, tmp_path) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        models.parse_hub_spec(spec)
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        models.resolve(spec, into=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_hub_ids_download_into_the_run_root_at_their_revision(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    calls = []

    def fake_hub_snapshot_download(repo_id, **kwargs):  # the hub: nothing real reaches it
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub_snapshot_download)
    into = tmp_path / "run" / "models"
    assert models.resolve("owner/name@v1.0", into=into) == tmp_path / "snapshot"
    assert models.resolve("owner/name") == tmp_path / "snapshot"
    assert calls == [("owner/name", {"revision": "v1.0", "cache_dir": into / "hub"}),
                     ("owner/name", {"revision": None, "cache_dir": None})]


def test_an_unreachable_hub_is_a_clear_value_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # fail fast anywhere
    monkeypatch.setenv("MIXRAY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="'no-such/model@main' is neither.*Hugging Face hub"):
        models.resolve("no-such/model@main", into=tmp_path / "run" / "models")
