"""Hub datasets read once into the run root (``<run_root>/datasets``) and from there after: by
`read_records`, by benchmarks (`load_benchmark`, `fetch_benchmarks`) and by the problems stage.

The Hugging Face hub is unreachable here, so the one seam that talks to it, the `datasets`
package, is replaced by `FakeHub` (installed into ``sys.modules`` for each test): it counts its
``load_dataset`` calls and returns objects with ``to_list()``, like a hub split. No Ray.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mixray.evaluate.benchmarks import (
    DatasetBenchmark,
    RegistryBenchmark,
    load_benchmark,
    parse_benchmark,
)
from mixray.evaluate.config import EvaluateConfig
from mixray.evaluate.stage import fetch_benchmarks, load_benchmarks
from mixray.problems.config import ProblemsConfig
from mixray.problems.datasets import (
    hub_cache_file,
    parse_hub_path,
    read_records,
    source_name,
)
from mixray.problems.stage import build_problems


def _gsm8k_like(n: int, tag: str = "") -> list[dict[str, Any]]:
    return [{"question": f"q{tag}{i}", "answer": f"work\n#### {i}", "meta": {"level": i % 3},
             "tags": ["a", "b"][: i % 3]} for i in range(n)]


class FakeSplit:
    """What `datasets.load_dataset(..., split=...)` returns, as far as mixray uses it."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self._records = records

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._records]


class FakeHub:
    """A fake of the Hugging Face hub behind `datasets.load_dataset`: every call recorded, the
    records of each dataset id given by `data` (by revision in ``"id@rev"`` keys), a dataset
    id in `failing` raising as a network error would."""

    def __init__(self, data: dict[str, list[dict[str, Any]]], failing: tuple[str, ...] = ()):
        self.data, self.failing = data, failing
        self.calls: list[tuple[str, str | None, str, str | None]] = []

    def load_dataset(self, path: str, name: str | None = None, *, split: str,
                     revision: str | None = None) -> FakeSplit:
        self.calls.append((path, name, split, revision))
        if path in self.failing:
            raise ConnectionError("hub unreachable")
        key = f"{path}@{revision}" if revision else path
        return FakeSplit(self.data[key])


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub({"openai/gsm8k": _gsm8k_like(1319), "me/mine": _gsm8k_like(8),
                    "me/mine@v1": _gsm8k_like(8, "v1-"), "me/mine@v2": _gsm8k_like(8, "v2-"),
                    "me/mixed": [{"a": 1}, {"a": "one"}]},
                   failing=("me/down",))
    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=fake.load_dataset))
    return fake


def test_a_hub_split_is_read_once_then_from_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "runs" / "datasets"
    first = read_records("hf:me/mine", None, "test", cache=cache)
    second = read_records("hf:me/mine", None, "test", cache=cache)
    assert hub.calls == [("me/mine", None, "test", None)]
    assert second == first == _gsm8k_like(8)  # nested dicts and lists come back as they were
    file = hub_cache_file("me/mine", None, "test", None, cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([file.name,
                                                              file.with_suffix(".json").name])
    assert file.name.startswith("me_mine-") and file.suffix == ".parquet"
    note = json.loads(file.with_suffix(".json").read_text())
    assert note["dataset"] == "me/mine" and note["split"] == "test" and note["rows"] == 8
    assert note["config"] is None and note["when"].endswith("Z")
    # Another split or config is another file; without a cache every read goes to the hub.
    read_records("hf:me/mine", "main", "test", cache=cache)
    read_records("hf:me/mine", None, "test")
    assert len(hub.calls) == 3 and len(list(cache.glob("*.parquet"))) == 2


def test_a_failed_hub_read_raises_and_caches_nothing(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "datasets"
    for _ in range(2):  # nothing was cached the first time: the second read tries the hub again
        with pytest.raises(ValueError, match=r"could not load hf:me/down .*ConnectionError"):
            read_records("hf:me/down", None, "test", cache=cache)
    assert len(hub.calls) == 2
    assert not cache.exists() or not list(cache.iterdir())


def test_a_revision_is_passed_to_the_hub_and_keys_the_cache(hub: FakeHub,
                                                            tmp_path: Path) -> None:
    cache = tmp_path / "datasets"
    v1 = read_records("hf:me/mine@v1", None, "test", cache=cache)
    v2 = read_records("hf:me/mine@v2", None, "test", cache=cache)
    assert read_records("hf:me/mine@v1", None, "test", cache=cache) == v1
    assert hub.calls == [("me/mine", None, "test", "v1"), ("me/mine", None, "test", "v2")]
    assert v1[0]["question"] == "qv1-0" and v2[0]["question"] == "qv2-0"
    assert len(list(cache.glob("*.parquet"))) == 2
    assert {json.loads(p.read_text())["revision"] for p in cache.glob("*.json")} == {"v1", "v2"}
    assert parse_hub_path("hf:me/mine@v1") == ("me/mine", "v1")
    assert parse_hub_path("hf:me/mine") == ("me/mine", None)
    assert source_name("hf:me/mine@v1", "main", "test") == "hf:me/mine@v1 (main/test)"
    for bad in ("hf:", "hf:me/mine@", "hf:@v1", "hf:me/mine@v1@v2"):
        with pytest.raises(ValueError, match="hf:owner/name@revision"):
            read_records(bad, None, "test", cache=cache)


def test_local_files_are_never_cached(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _gsm8k_like(3)))
    cache = tmp_path / "datasets"
    assert read_records(str(path), cache=cache) == _gsm8k_like(3)
    assert not cache.exists()


def test_what_cannot_be_cached_is_returned_uncached(hub: FakeHub, tmp_path: Path,
                                                           caplog) -> None:
    cache = tmp_path / "datasets"
    records = read_records("hf:me/mixed", None, "test", cache=cache)
    assert records == [{"a": 1}, {"a": "one"}]  # as the hub gave them, not coerced
    assert not cache.exists() or not list(cache.glob("*.parquet"))
    assert "not cached" in caplog.text
    # A run root that cannot be written (here: a file where the cache folder should be) costs
    # the cache, not the read.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    assert read_records("hf:me/mine", None, "test", cache=blocked / "datasets") == _gsm8k_like(8)
    assert "could not cache it" in caplog.text


def test_benchmarks_read_through_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "datasets"
    first = load_benchmark(RegistryBenchmark(name="gsm8k"), cache=cache)
    again = load_benchmark(RegistryBenchmark(name="gsm8k"), cache=cache)
    assert hub.calls == [("openai/gsm8k", "main", "test", None)]
    assert again.rows == first.rows and len(first.rows) == 1319
    pinned = DatasetBenchmark(name="mine", path="hf:me/mine@v1",
                              fields={"problem": "question", "answer": "answer"},
                              answer_transform="after_hashes")
    loaded = load_benchmark(pinned, cache=cache)
    assert loaded.source == "hf:me/mine@v1 (test)" and loaded.rows[0]["problem"] == "qv1-0"
    assert hub.calls[-1] == ("me/mine", None, "test", "v1")
    # The shorthand names it without the revision; a malformed one fails on validation.
    assert parse_benchmark("hf:me/mine@v1") == {"kind": "dataset", "name": "mine",
                                                "path": "hf:me/mine@v1"}
    with pytest.raises(ValidationError, match="hf:owner/name@revision"):
        DatasetBenchmark(name="x", path="hf:me/mine@")


def test_fetch_benchmarks_reads_each_hub_benchmark_once(hub: FakeHub, tmp_path: Path) -> None:
    cfg = EvaluateConfig.model_validate({"benchmarks": [
        "gsm8k", "heldout", "rg:basic_arithmetic:4",
        {"kind": "dataset", "name": "mine", "path": "hf:me/mine",
         "fields": {"problem": "question"}, "answer_transform": "after_hashes"}]})
    root = tmp_path / "runs"
    assert fetch_benchmarks(cfg, root) == ["gsm8k", "mine"]
    assert fetch_benchmarks(cfg, root) == ["gsm8k", "mine"]  # already there: no hub call
    assert [c[0] for c in hub.calls] == ["openai/gsm8k", "me/mine"]
    assert len(list((root / "datasets").glob("*.parquet"))) == 2
    # What a trial then does: every hub benchmark from the run root, none from the hub.
    loaded = load_benchmarks(cfg.model_copy(update={"benchmarks": [cfg.benchmarks[0]]}),
                             cache=root / "datasets")
    assert len(loaded[0].rows) == 1319 and len(hub.calls) == 2


def test_fetch_benchmarks_fails_on_a_broken_benchmark(hub: FakeHub, tmp_path: Path) -> None:
    cfg = EvaluateConfig.model_validate({"benchmarks": [
        {"kind": "dataset", "name": "down", "path": "hf:me/down"}]})
    with pytest.raises(ValueError, match="could not load hf:me/down"):
        fetch_benchmarks(cfg, tmp_path)
    assert not (tmp_path / "datasets").exists() or not list((tmp_path / "datasets").iterdir())


def test_the_problems_stage_reads_hub_sources_through_the_run_root(hub: FakeHub,
                                                                   tmp_path: Path) -> None:
    source = {"kind": "dataset", "path": "hf:openai/gsm8k@v1", "config": "main",
              "fields": {"problem": "question", "answer": "answer"},
              "answer_transform": "after_hashes"}
    hub.data["openai/gsm8k@v1"] = _gsm8k_like(40)
    root = tmp_path / "runs"
    stage, _ = build_problems(ProblemsConfig.model_validate(
        {"source": source, "train_size": 10, "eval_size": 5}), root)
    other, _ = build_problems(ProblemsConfig.model_validate(
        {"source": source, "train_size": 20, "eval_size": 5}), root)
    assert other.key != stage.key
    assert hub.calls == [("openai/gsm8k", "main", "train", "v1")]  # the second read the copy
    assert len(list((root / "datasets").glob("openai_gsm8k-*.parquet"))) == 1
