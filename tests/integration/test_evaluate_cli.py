"""`python -m mixray.evaluate` end to end on the tiny model: a local jsonl benchmark (with a field
mapping, a size check and two unusable records) and an offline reasoning-gym set, sampled twice
per problem, re-judged by tiny-random (whose verdicts are unparseable), recorded in MLflow.

The CLI starts its own local Ray cluster in a subprocess; run this file under the machine's Ray
lock (``flock /tmp/mixray-ray.lock``), not inside it (the lock is not re-entrant).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
N = 2  # samples per problem
MAX_TOKENS = 12
RG_SIZE = 4
GOOD = [{"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}\n#### {a + b:,}"}
        for a, b in [(2, 3), (7, 6), (10, 4), (9, 9), (1000, 1), (3, 3), (8, 2), (5, 5)]]
BAD = [json.dumps({"question": "What is 1 + 1?"}), "{this line is not json"]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    bench = tmp / "local.jsonl"
    lines = [json.dumps(r) for r in GOOD[:6]] + BAD + [json.dumps(r) for r in GOOD[6:]]
    bench.write_text("\n".join(lines) + "\n")
    local = ("{kind: dataset, name: local, path: '%s', fields: {problem: question, answer: "
             "solution}, answer_transform: after_hashes, answer_format: last_number, "
             "expected_size: 10}" % bench)
    rg = ("{kind: reasoning_gym, task: basic_arithmetic, size: %d, task_args: {min_terms: 2, "
          "max_terms: 2, min_digits: 1, max_digits: 1}}" % RG_SIZE)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp / "out"
    cmd = [sys.executable, "-m", "mixray.evaluate", "--model", "tiny-random",
           "--benchmarks", local, rg, "--n", str(N), "--temperature", "0.8",
           "--max-new-tokens", str(MAX_TOKENS), "--judge", "tiny-random", "--out", str(out),
           "--tracking-uri", uri, "--experiment", "evaltest", "--samples-to-log", "2",
           "--ray-address", "local"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=400)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    print(f"CLI took {seconds:.0f} s")
    return out, uri, proc.stdout


def test_summary_table_is_printed(evaluation) -> None:
    _, _, stdout = evaluation
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if "accuracy ± se" in line)
    table = "\n".join(lines[head:])
    names = [line.split()[0] for line in lines[head + 2:head + 4]]
    assert names == ["local", "rg-basic_arithmetic"]
    assert "P (mean of 2)" in table and "MLflow: experiment 'evaltest'" in stdout


def test_per_sample_rows(evaluation) -> None:
    out, _, _ = evaluation
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    assert len(samples) == (len(GOOD) + RG_SIZE) * N
    assert {"problem", "completion", "extracted", "correct"} <= set(samples[0])
    per_problem = defaultdict(set)
    for s in samples:
        per_problem[(s["benchmark"], s["problem_id"])].add(s["sample_idx"])
        assert 0 < s["n_tokens"] <= MAX_TOKENS and s["finish_reason"] in ("stop", "length")
        assert s["correct"] == (s["verified"] or s["judge"] == "true")
    assert all(idx == set(range(N)) for idx in per_problem.values())
    counts = defaultdict(int)
    for bench, _ in per_problem:
        counts[bench] += 1
    assert dict(counts) == {"local": len(GOOD), "rg-basic_arithmetic": RG_SIZE}
    golds = {s["answer"] for s in samples if s["benchmark"] == "local"}
    assert golds == {f"{a['solution'].rsplit('#### ', 1)[1]}" for a in GOOD}  # after '####'


def test_unusable_records_are_set_aside_with_reasons(evaluation) -> None:
    out, _, _ = evaluation
    bad = [json.loads(line) for line in (out / "bad_rows.jsonl").read_text().splitlines()]
    assert [(b["benchmark"], b["index"]) for b in bad] == [("local", 6), ("local", 7)]
    assert "missing field 'solution'" in bad[0]["reason"] and "not valid JSON" in bad[1]["reason"]


def test_metrics_json_matches_the_samples(evaluation) -> None:
    out, _, _ = evaluation
    report = json.loads((out / "metrics.json").read_text())
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    assert set(report["benchmarks"]) == {"local", "rg-basic_arithmetic"}
    keys = {"accuracy", "accuracy_stderr", "pass@1", f"pass@{N}", "maj@1", f"maj@{N}",
            "response_tokens_mean", "truncation_rate", "no_answer_rate", "n_problems",
            "n_samples", "bad_rows", "judge_checked", "judge_undecided"}
    for name, m in report["benchmarks"].items():
        assert keys <= set(m), name
        rows = [s for s in samples if s["benchmark"] == name]
        by_problem = defaultdict(list)
        for s in rows:
            by_problem[s["problem_id"]].append(s["correct"])
        expected = sum(sum(c) / len(c) for c in by_problem.values()) / len(by_problem)
        assert m["accuracy"] == pytest.approx(expected)
        assert m["n_samples"] == len(rows)
        assert m["truncation_rate"] == pytest.approx(
            sum(s["finish_reason"] == "length" for s in rows) / len(rows))
    assert report["benchmarks"]["local"]["bad_rows"] == len(BAD)
    avg = report["average"]["accuracy"]
    assert avg == pytest.approx(sum(m["accuracy"] for m in report["benchmarks"].values()) / 2)
    assert report["metrics"]["eval_accuracy"] == pytest.approx(avg)
    assert report["metrics"]["eval_n"] == len(GOOD) + RG_SIZE


def test_judge_undecided_verdicts_are_counted_not_fatal(evaluation) -> None:
    out, _, _ = evaluation
    report = json.loads((out / "metrics.json").read_text())
    samples = pq.read_table(out / "samples.parquet").to_pylist()
    judged = [s for s in samples if s["judge"] is not None]
    # GSM8K-style (last_number) benchmarks are never judged; the rg set's rejected answers are.
    assert report["benchmarks"]["local"]["judge_checked"] == 0
    rg = report["benchmarks"]["rg-basic_arithmetic"]
    rejected = [s for s in samples if s["benchmark"] == "rg-basic_arithmetic"
                and s["extracted"] and not s["verified"]]
    assert rg["judge_checked"] == len(judged) == len(rejected) > 0
    assert rg["judge_true"] + rg["judge_false"] + rg["judge_undecided"] == rg["judge_checked"]
    assert all(not s["correct"] for s in judged if s["judge"] == "undecided")
    # the model's and the judge's generations: two keyed outputs of the generate stage
    assert len(list((out / "artifacts" / "generate").glob("*/_COMMITTED"))) == 2


def test_mlflow_run(evaluation) -> None:
    out, uri, _ = evaluation
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("evaltest")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    report = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["eval_accuracy"] == pytest.approx(report["metrics"]["eval_accuracy"])
    assert f"eval.local.pass_at_{N}" in run.data.metrics
    assert run.data.params["model"] == "tiny-random" and run.data.params["n_samples"] == str(N)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "sample_completions.json", "bad_rows.jsonl"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "sample_completions.json", str(out.parent))
    table = json.loads(Path(local).read_text())
    assert len(table["data"]) == 2 * 2  # 2 problems of each of the 2 benchmarks, sample 0
