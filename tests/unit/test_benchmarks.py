"""Benchmark specs and registry, loading with field mappings, size checks and bad rows, scoring
by answer format, the judge's bookkeeping, metric aggregation, and the CLI's argument errors.
No Ray: nothing here generates."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import TypeAdapter, ValidationError

from mixray.artifacts import StageDir
from mixray.config import load_sweep
from mixray.evaluate import stage
from mixray.evaluate.__main__ import format_summary, main
from mixray.evaluate.benchmarks import (
    EVAL_RG_SEED,
    REGISTRY,
    BenchmarkSpec,
    DatasetBenchmark,
    HeldOutBenchmark,
    ReasoningGymBenchmark,
    RegistryBenchmark,
    load_benchmark,
)
from mixray.evaluate.config import EvaluateConfig, JudgeConfig
from mixray.evaluate.judge import parse_verdict
from mixray.evaluate.scoring import average_metrics
from mixray.generate.job import Placement, model_job
from mixray.generate.stage import generate_cached
from mixray.problems.datasets import FieldMap, gold_answer

REPO = Path(__file__).resolve().parents[2]
SPECS = TypeAdapter(list[BenchmarkSpec])
MLFLOW_NAME = re.compile(r"^[/\w.\- :]*$")  # what MLflow accepts as a metric name (POSIX)


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# --- Registry and specs ---------------------------------------------------------------------


def test_registry_holds_the_papers_benchmarks_with_their_sizes() -> None:
    sizes = {name: b.expected_size for name, b in REGISTRY.items()}
    # PAPER.md, "Evaluation": MATH-500 (or MATH test, 5,000), GSM8K 1,319, AMC 2023 40,
    # AIME 2024 30, OlympiadBench English open-ended maths 675.
    assert sizes == {"math500": 500, "math": 5000, "gsm8k": 1319, "amc2023": 40, "aime2024": 30,
                     "olympiadbench": 675}
    assert all(b.path.startswith("hf:") for b in REGISTRY.values())
    gsm8k = REGISTRY["gsm8k"]
    assert (gsm8k.answer_format, gsm8k.answer_transform, gsm8k.prompt) == (
        "last_number", "after_hashes", "{problem}")  # the raw question, scored by last number
    assert {b.answer_format for n, b in REGISTRY.items() if n != "gsm8k"} == {"boxed"}


@pytest.mark.parametrize(("text", "kind", "name"), [
    ("heldout", "heldout", "heldout"),
    ("heldout=runs/x/eval.parquet", "heldout", "heldout"),
    ("math500", "registry", "math500"),
    ("gsm8k=/data/gsm8k.parquet", "registry", "gsm8k"),
    ("mine=/data/mine.jsonl", "dataset", "mine"),
    ("/data/other set.parquet", "dataset", "other_set"),
    ("hf:someone/some.data", "dataset", "some_data"),
    ("rg:basic_arithmetic", "reasoning_gym", "rg-basic_arithmetic"),
    ("rg:basic_arithmetic:12", "reasoning_gym", "rg-basic_arithmetic"),
])
def test_shorthands(text: str, kind: str, name: str) -> None:
    (spec,) = SPECS.validate_python([text])
    assert (spec.kind, spec.name) == (kind, name)


@pytest.mark.parametrize(("value", "match"), [
    ("math5000", "unknown benchmark"),
    ("rg:basic_arithmetic:many", "rg:TASK"),
    ("rg:no_such_task", "unknown reasoning-gym task"),
    ("mine=/data/mine.csv", "neither"),
    ({"kind": "dataset", "name": "a b", "path": "x.jsonl"}, "pattern"),
    ({"kind": "heldout", "prompt": "no field here"}, "{problem}"),
    ({"kind": "registry", "name": "math500", "fields": {"problem": "q"}}, "Extra inputs"),
])
def test_bad_specs_are_refused(value, match: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(match)):
        SPECS.validate_python([value])


def test_evaluate_config_defaults_keep_sweeps_valid() -> None:
    cfg = EvaluateConfig()
    assert [b.kind for b in cfg.benchmarks] == ["heldout"]
    assert (cfg.sampling.n, cfg.sampling.temperature, cfg.judge, cfg.pass_ks) == (1, 0.0, None, [1])
    for sweep in sorted((REPO / "sweeps").glob("*.yaml")):
        benchmarks = load_sweep(sweep).evaluate.benchmarks  # every sweep file stays valid
        if sweep.stem in ("laptop", "smoke"):
            assert benchmarks == cfg.benchmarks, sweep.name  # they score the held-out set


def test_evaluate_config_reads_shorthands_and_mappings() -> None:
    cfg = EvaluateConfig.model_validate({
        "benchmarks": ["heldout", "gsm8k=/d/g.jsonl",
                       {"kind": "reasoning_gym", "task": "basic_arithmetic", "size": 4}],
        "sampling": {"n": 6, "temperature": 0.6}, "judge": {"model": "tiny-random"}})
    assert [type(b) for b in cfg.benchmarks] == [HeldOutBenchmark, RegistryBenchmark,
                                                ReasoningGymBenchmark]
    assert cfg.pass_ks == [1, 2, 4, 6]
    assert cfg.judge == JudgeConfig(model="tiny-random")


def test_engines_of_the_model_and_the_judge() -> None:
    cfg = EvaluateConfig.model_validate({
        "engine": {"kind": "vllm", "tensor_parallel_size": 2},
        "judge": {"engine": {"kind": "http", "base_url": "http://judge:8000/v1/",
                             "model": "Qwen/Qwen2.5-32B-Instruct"}}})
    assert (cfg.engine.kind, cfg.gpus) == ("vllm", 2.0)
    assert cfg.judge.model is None and cfg.judge.engine.base_url == "http://judge:8000/v1"
    assert EvaluateConfig().gpus == 0.0 and EvaluateConfig().engine.kind == "hf"
    assert EvaluateConfig(judge={"model": "tiny-random"}).judge.engine.kind == "hf"


@pytest.mark.parametrize(("argv", "model", "error"), [
    (["--model", "tiny-random"], "tiny-random", None),
    (["--engine", "{kind: http, base_url: 'http://h:8000/v1', model: served-7b}"], "served-7b",
     None),
    (["--engine", "{kind: http, base_url: 'http://h:8000/v1', model: served-7b}",
      "--model", "tiny-random"], None, "leave --model out"),
    ([], None, "--model is required"),
])
def test_the_cli_evaluates_a_model_or_a_served_one(argv, model, error) -> None:
    """A served model is named by its engine; a local one by --model; never both or neither."""
    from mixray.evaluate.__main__ import build_parser, config_from_args, model_name

    args = build_parser().parse_args(["--benchmarks", "gsm8k", *argv])
    cfg = config_from_args(args)
    if error is None:
        assert model_name(args, cfg) == model
    else:
        with pytest.raises(ValueError, match=re.escape(error)):
            model_name(args, cfg)


@pytest.mark.parametrize(("data", "match"), [
    ({"sampling": {"n": 4}}, "temperature 0"),
    ({"judge": {}}, "needs a model"),
    ({"judge": {"model": "m", "engine": {"kind": "http", "base_url": "http://x", "model": "m"}}},
     "leave the judge's model out"),
    ({"sampling": {"n": 2, "temperature": 0.5}, "ks": [3]}, "ks"),
    ({"benchmarks": ["heldout", "heldout=x.parquet"]}, "unique"),
    ({"benchmarks": []}, "at least 1"),
    ({"prompt": "no field"}, "{problem}"),
    ({"judge": {"model": "m", "prompt": "only {problem} and {answer}"}}, "{gold}"),
])
def test_evaluate_config_refuses_mistakes(data: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(match)):
        EvaluateConfig.model_validate(data)


# --- Loading: field mappings, transforms, sizes, bad rows -----------------------------------


@pytest.mark.parametrize(("value", "transform", "gold"), [
    ("42", "as_is", "42"),
    (27.0, "as_is", "27.0"),
    ("Natalia sold 48/2 = 24.\n#### 72", "after_hashes", "72"),
    ("so $x = \\boxed{\\frac{1}{2}}$.", "last_boxed", "\\frac{1}{2}"),
    (["$1$", "$\\sqrt{2}$"], "join_list", "1, \\sqrt{2}"),
    ("$(1,2]$", "join_list", "(1,2]"),
])
def test_gold_answer_transforms(value, transform: str, gold: str) -> None:
    assert gold_answer(value, transform) == gold


@pytest.mark.parametrize(("value", "transform"), [
    ("72", "after_hashes"), ("no box", "last_boxed"), (["$$", " "], "join_list"), ("  ", "as_is"),
])
def test_gold_answer_refuses_missing_answers(value, transform: str) -> None:
    with pytest.raises(ValueError):
        gold_answer(value, transform)


def test_local_jsonl_with_field_mapping_and_bad_rows(tmp_path: Path) -> None:
    records = [
        {"q": "What is 2 + 3?", "sol": "2 + 3 = 5\n#### 5", "uid": "a"},
        {"q": "What is 1,000 + 1?", "sol": "#### 1,001", "uid": "b"},
        {"q": "No answer", "uid": "c"},                       # missing field
        {"q": "", "sol": "#### 3", "uid": "d"},                # empty problem
        "{not json",                                           # unreadable line
        {"q": "No hashes", "sol": "just 3", "uid": "e"},       # transform finds nothing
        {"q": "Words", "sol": "#### many", "uid": "f"},        # GSM8K gold without a number
        {"q": "Again", "sol": "#### 7", "uid": "a"},           # duplicate id
        [1, 2],                                                # not an object
        {"q": "What is 6 * 7?", "sol": "#### 42", "uid": "g"},
    ]
    path = _jsonl(tmp_path / "mine.jsonl", records)
    spec = DatasetBenchmark(name="mine", path=str(path), expected_size=10,
                            fields=FieldMap(problem="q", answer="sol", id="uid"),
                            answer_transform="after_hashes", answer_format="last_number")
    loaded = load_benchmark(spec)
    assert [r["problem_id"] for r in loaded.rows] == ["a", "b", "g"]
    assert [r["answer"] for r in loaded.rows] == ["5", "1,001", "42"]
    assert len(loaded.rows) + len(loaded.bad_rows) == len(records)  # nothing silently dropped
    reasons = {b["index"]: b["reason"] for b in loaded.bad_rows}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert "missing field 'sol'" in reasons[2] and "empty field 'q'" in reasons[3]
    assert "not valid JSON" in reasons[4] and "####" in reasons[5]
    assert "no number" in reasons[6] and "duplicate id 'a'" in reasons[7]
    assert "not an object" in reasons[8]
    assert all(b["benchmark"] == "mine" and b["record"] for b in loaded.bad_rows)
    assert loaded.bad_rows[2]["record"] == "{not json"  # the raw line, to fix it by hand


def test_parquet_and_json_files_load_the_same(tmp_path: Path) -> None:
    records = [{"problem": f"p{i}", "answer": str(i)} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "b.parquet")
    (tmp_path / "b.json").write_text(json.dumps(records))
    rows = [load_benchmark(DatasetBenchmark(name="b", path=str(tmp_path / f"b.{ext}"))).rows
            for ext in ("parquet", "json")]
    assert rows[0] == rows[1] and [r["problem_id"] for r in rows[0]] == [f"b/{i}" for i in range(5)]


def test_registry_benchmark_from_a_local_copy_checks_its_size(tmp_path: Path) -> None:
    records = [{"problem": f"AIME problem {i}", "answer": str(100 + i)} for i in range(30)]
    path = _jsonl(tmp_path / "aime.jsonl", records)
    loaded = load_benchmark(RegistryBenchmark(name="aime2024", path=str(path), limit=5))
    assert len(loaded.rows) == 5 and loaded.answer_format == "boxed"  # limit after the check
    short = _jsonl(tmp_path / "aime_short.jsonl", records[:29])
    with pytest.raises(ValueError, match="holds 29 records, expected 30"):
        load_benchmark(RegistryBenchmark(name="aime2024", path=str(short)))


def test_a_benchmark_with_no_usable_row_fails(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "x.jsonl", [{"question": "a"}, {"question": "b"}])
    with pytest.raises(ValueError, match="none of the 2 records.*missing field 'problem'"):
        load_benchmark(DatasetBenchmark(name="x", path=str(path)))
    with pytest.raises(ValueError, match="does not exist"):
        load_benchmark(DatasetBenchmark(name="x", path=str(tmp_path / "missing.jsonl")))


def test_hub_loading_needs_datasets_and_maps_fields(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ValueError, match="needs the 'datasets' package"):
        load_benchmark(RegistryBenchmark(name="gsm8k"))

    calls = []

    class FakeDataset:
        def to_list(self):
            return [{"question": f"q{i}", "answer": f"work\n#### {i}"} for i in range(1319)]

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    loaded = load_benchmark(RegistryBenchmark(name="gsm8k"))
    assert calls == [("openai/gsm8k", "main", "test")]
    assert len(loaded.rows) == 1319 and loaded.rows[7] == {
        "problem_id": "gsm8k/7", "problem": "q7", "answer": "7"}
    assert loaded.prompt == "{problem}" and loaded.answer_format == "last_number"


def test_heldout_needs_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heldout=PATH"):
        load_benchmark(HeldOutBenchmark())
    rows = [{"problem_id": f"t/{i}", "problem": f"p{i}", "answer": "1", "source": "s",
             "meta": "{}"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "eval.parquet")
    loaded = load_benchmark(HeldOutBenchmark(), heldout=tmp_path / "eval.parquet")
    assert [r["problem_id"] for r in loaded.rows] == ["t/0", "t/1", "t/2"]
    assert loaded.answer_format == "lenient"


def test_reasoning_gym_sets_avoid_training_problems() -> None:
    spec = ReasoningGymBenchmark(task="basic_arithmetic", size=6)
    assert spec.seed == EVAL_RG_SEED and spec.name == "rg-basic_arithmetic"
    free = load_benchmark(spec)
    assert len(free.rows) == 6 and len({r["problem"] for r in free.rows}) == 6
    training = {r["problem"] for r in free.rows[:3]}  # pretend these were trained on
    avoided = load_benchmark(spec, exclude=training)
    assert len(avoided.rows) == 6 and not training & {r["problem"] for r in avoided.rows}
    # When training took (nearly) every problem the generator makes, the set cannot be filled.
    drawn = {r["problem"] for r in load_benchmark(spec.model_copy(update={"size": 12})).rows}
    with pytest.raises(ValueError, match="outside the training set"):
        load_benchmark(spec, exclude=drawn)


# --- Scoring, the judge, aggregation --------------------------------------------------------


@pytest.mark.parametrize(("completion", "gold", "fmt", "expected"), [
    ("so \\boxed{\\frac{1}{2}}", "0.5", "boxed", ("\\frac{1}{2}", True, "math_verify")),
    ("the answer is 0.5", "0.5", "boxed", (None, False, None)),  # the paper: no box, no answer
    ("the answer is 0.5", "0.5", "lenient", ("0.5", True, "math_verify")),
    ("empty \\boxed{} box", "3", "boxed", (None, False, None)),
    ("She pays $1,234.50 in total.", "1234.5", "last_number", ("1234.50", True, "number")),
    ("I do not know.", "7", "last_number", (None, False, None)),
    ("so \\boxed{\\$}", "3", "boxed", ("\\$", False, "string")),  # math-verify parses nothing
])
def test_score_completion_by_format(completion: str, gold: str, fmt: str, expected) -> None:
    assert stage.score_completion(completion, gold, fmt) == expected


@pytest.mark.parametrize(("text", "verdict"), [
    ("True", "true"), (" false.", "false"), ("**True**", "true"),
    ("'FALSE' - they differ", "false"),
    ("Truely", "undecided"), ("The answer is True", "undecided"), ("", "undecided"),
    (None, "undecided"), ("\x1b\x85 19 lo", "undecided"),
])
def test_parse_verdict(text, verdict: str) -> None:
    assert parse_verdict(text) == verdict


def _sample(gen_id: str, bench: str, extracted, verified: bool, finish: str = "stop") -> dict:
    return {"gen_id": gen_id, "benchmark": bench, "extracted": extracted, "verified": verified,
            "correct": verified, "judge": None, "finish_reason": finish}


def test_judge_sees_only_rejected_answers_and_only_true_flips_them() -> None:
    samples = [_sample("a", "math", "3", False), _sample("b", "math", "4", True),
               _sample("c", "math", None, False), _sample("d", "gsm8k", "5", False),
               _sample("e", "math", "6", False, finish="error"), _sample("f", "math", "7", False),
               _sample("g", "math", "8", False)]
    formats = {"math": "boxed", "gsm8k": "last_number"}
    candidates = stage.judge_candidates(samples, formats)
    assert [s["gen_id"] for s in candidates] == ["a", "f", "g"]
    stage.apply_verdicts(candidates, {"a": "true", "f": "undecided", "g": "false"})
    assert {s["gen_id"]: (s["judge"], s["correct"]) for s in samples} == {
        "a": ("true", True), "b": (None, True), "c": (None, False), "d": (None, False),
        "e": (None, False), "f": ("undecided", False), "g": ("false", False)}


def test_average_metrics_is_the_unweighted_mean_with_combined_error() -> None:
    per = {"math": {"accuracy": 0.6, "accuracy_stderr": 0.03, "truncation_rate": 0.1,
                    "no_answer_rate": 0.2, "response_tokens_mean": 300.0, "error_rate": 0.0},
           "aime": {"accuracy": 0.1, "accuracy_stderr": 0.04, "truncation_rate": 0.5,
                    "no_answer_rate": 0.4, "response_tokens_mean": 900.0, "error_rate": 0.0}}
    avg = average_metrics(per)
    assert avg["accuracy"] == pytest.approx(0.35)
    assert avg["accuracy_stderr"] == pytest.approx(0.05 / 2)  # sqrt(0.03^2 + 0.04^2) / 2
    assert avg["truncation_rate"] == pytest.approx(0.3)
    assert avg["response_tokens_mean"] == pytest.approx(600.0)
    assert avg["n_benchmarks"] == 2


def test_flat_metrics_names_are_mlflow_safe_and_per_benchmark() -> None:
    per = {"math500": {"accuracy": 0.5, "accuracy_stderr": 0.1, "pass@1": 0.5, "pass@4": 0.8,
                       "maj@4": 0.6, "response_tokens_mean": 10.0, "truncation_rate": 0.0,
                       "no_answer_rate": 0.25, "error_rate": 0.0, "n_problems": 4,
                       "n_samples": 16, "bad_rows": 1},
           "rg-basic_arithmetic": {"accuracy": 0.25, "accuracy_stderr": 0.2, "pass@1": 0.25,
                                   "response_tokens_mean": 20.0, "truncation_rate": 0.5,
                                   "no_answer_rate": 0.0, "error_rate": 0.0, "n_problems": 2,
                                   "n_samples": 8, "bad_rows": 0}}
    flat = stage.flat_metrics(per, average_metrics(per), judged=False)
    assert flat["eval_accuracy"] == pytest.approx(0.375)
    assert (flat["eval_n"], flat["eval_samples"], flat["eval_bad_rows"]) == (6, 24, 1)
    assert flat["eval_no_answer_rate"] == pytest.approx(0.125)
    assert flat["eval.math500.pass_at_4"] == 0.8 and flat["eval.math500.maj_at_4"] == 0.6
    assert flat["eval.rg-basic_arithmetic.accuracy"] == 0.25
    assert all(MLFLOW_NAME.match(k) for k in flat) and not any("@" in k for k in flat)
    summary = format_summary({"benchmarks": per, "average": average_metrics(per), "n_samples": 4})
    lines = summary.splitlines()
    assert len(lines) == 2 + len(per) + 1 and lines[-1].startswith("P (mean of 2)")
    assert "0.375 ± " in lines[-1]


def test_sample_table_takes_the_first_problems_of_each_benchmark() -> None:
    bench = [types.SimpleNamespace(name=n, rows=[{"problem_id": f"{n}{i}"} for i in range(5)])
             for n in ("a", "b")]
    samples = [{"benchmark": b.name, "problem_id": r["problem_id"], "sample_idx": s,
                "problem": "p", "answer": "1", "completion": "x" * 5000, "extracted": None,
                "correct": False, "judge": None, "finish_reason": "length", "n_tokens": 9}
               for b in bench for r in b.rows for s in range(2)]
    table = stage.sample_table(samples, bench, per_benchmark=2)
    assert table["columns"][:3] == ["benchmark", "problem_id", "problem"]
    assert [row[1] for row in table["data"]] == ["a0", "a1", "b0", "b1"]
    completion = table["data"][0][table["columns"].index("completion")]
    assert len(completion) < 5000 and completion.endswith("[...]")


def _fake_generation(monkeypatch, errors: int = 0) -> list[Path]:
    """run_generation without Ray: one part per call; returns the folders it was run into."""
    from mixray.generate import stage as generate

    runs: list[Path] = []

    def run(job, inputs_path: Path, out_dir: Path) -> dict[str, float]:
        runs.append(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"part-{len(runs)}-00000.parquet").write_bytes(b"rows")
        return {"rows": 1, "errors": errors}

    monkeypatch.setattr(generate, "run_generation", run)
    return runs


EVAL_ROWS = [{"problem_id": "b/0", "problem": "1 + 1?", "answer": "2"}]


def _eval_spec(tmp_path: Path, cfg: EvaluateConfig) -> dict:
    model = tmp_path / "model"
    if not model.is_dir():  # written once: its fingerprint (size, mtime) is part of the key
        model.mkdir()
        (model / "model.safetensors").write_bytes(b"w")
    return stage.evaluation_spec("eval", cfg, model, None, EVAL_ROWS)


def _eval_run(tmp_path: Path, cfg: EvaluateConfig, placement: Placement = Placement()):
    job = model_job(cfg, "eval", tmp_path / "model", "{problem}", None, placement)
    spec = _eval_spec(tmp_path, cfg)
    return generate_cached(job, spec, tmp_path / "inputs.parquet", tmp_path / "root",
                           failed_rows="retried")


def test_other_evaluations_get_other_folders_and_the_same_one_resumes(tmp_path: Path,
                                                                       monkeypatch) -> None:
    runs = _fake_generation(monkeypatch)
    greedy, sampled = EvaluateConfig(), EvaluateConfig(sampling={"n": 2, "temperature": 0.5})
    killed = StageDir(tmp_path / "root", "generate", _eval_spec(tmp_path, greedy))
    (killed.partial() / "data").mkdir()
    (killed.partial() / "data" / "part-killed-00000.parquet").write_bytes(b"rows")
    first, stats = _eval_run(tmp_path, greedy)
    assert first == killed and stats is not None  # it resumed the killed run's work dir
    assert sorted(p.name for p in (first.path / "data").glob("part-*")) == [
        "part-1-00000.parquet", "part-killed-00000.parquet"]
    other, _ = _eval_run(tmp_path, sampled)
    assert other.path != first.path and first.is_committed() and other.is_committed()
    again, stats = _eval_run(tmp_path, greedy, Placement(cpus_per_engine=2, torch_threads=2))
    assert again == first and stats is None and len(runs) == 2  # reused as it is


def test_failed_rows_of_a_kept_evaluation_are_retried(tmp_path: Path, monkeypatch) -> None:
    runs = _fake_generation(monkeypatch, errors=1)
    first, _ = _eval_run(tmp_path, EvaluateConfig())
    again, stats = _eval_run(tmp_path, EvaluateConfig())
    assert again == first and stats is not None and len(runs) == 2
    assert runs[1] == first.path.parent / f".partial-{first.key}" / "data"  # reopened
    assert len(list((first.path / "data").glob("part-*"))) == 2 and first.is_committed()


@pytest.mark.parametrize(("data", "match"), [
    ({"n_samples": 4}, "evaluate.n_samples: moved to evaluate.sampling.n"),
    ({"temperature": 0.5, "max_new_tokens": 8},
     "evaluate.temperature: moved to evaluate.sampling.temperature; evaluate.max_new_tokens: "
     "moved to evaluate.sampling.max_new_tokens"),
    ({"judge": {"model": "m", "max_new_tokens": 4}},
     "evaluate.judge.max_new_tokens: moved to evaluate.judge.sampling.max_new_tokens"),
    ({"judge": {"model": "m", "sampling": {"temperature": 0.7}}}, "the judge is greedy"),
])
def test_old_evaluate_keys_and_a_sampled_judge_are_refused(data: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(match)):
        EvaluateConfig.model_validate(data)


# --- The CLI refuses bad arguments before starting anything ---------------------------------


@pytest.mark.parametrize("args", [
    ["--benchmarks", "nonsense-benchmark"],
    ["--benchmarks", "rg:basic_arithmetic:4", "--n", "3"],            # sampling needs a temperature
    ["--benchmarks", "rg:basic_arithmetic:4", "--limit", "0"],
    ["--benchmarks", "mine=/no/such/file.jsonl"],
    ["--benchmarks", "heldout"],                                     # no sweep here: needs =PATH
    ["--benchmarks", "rg:basic_arithmetic:4", "--exclude-problems", "/no/such/train.parquet"],
])
def test_cli_bad_arguments_exit_2(args: list[str], capsys) -> None:
    assert main(["--model", "tiny-random", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.splitlines()) <= 6


def test_cli_unknown_model_and_flags_exit_2(capsys) -> None:
    assert main(["--model", "/no/such/model", "--benchmarks", "rg:basic_arithmetic:4"]) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--model", "tiny-random", "--benchmarks", "math500", "--temprature", "1"])
    assert exc.value.code == 2
    assert main(["--benchmarks", "math500"]) == 2  # --model is required (no http engine)
    assert "--model is required" in capsys.readouterr().err


def test_pass_ks_default_covers_powers_of_two_and_n() -> None:
    assert EvaluateConfig(sampling={"n": 16, "temperature": 1.0}).pass_ks == [1, 2, 4, 8, 16]
    assert EvaluateConfig(sampling={"n": 3, "temperature": 1.0}, ks=[3, 1, 3]).pass_ks == [1, 3]
    assert math.isclose(EvaluateConfig(sampling={"temperature": 0.0}).sampling.temperature, 0.0)
