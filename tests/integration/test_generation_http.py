"""An http teacher against a real OpenAI-compatible server on 127.0.0.1, through the generation
stage: the same schema and row counts as the hf engine, n samples per problem, and an engine
error (the server answers 500 for one problem) that becomes counted error rows. The same server
is then evaluated as a model (what `python -m mixray.evaluate` does with an http engine).
When the server fails every third request, the sweep's generation and `python -m
mixray.evaluate` exit 1, keep nothing as finished, and rerun against it healthy regenerate only
the rows that failed.

The server is this file run as a script (``--serve``): the standard library's HTTP server over
`HFEngine` with the tiny model, one request at a time. It fails on purpose for prompts holding
a user turn equal to ``--fail-always`` (500 every time) or ``--fail-once`` (503 the first
time), and on every k-th request once told so (``POST /control {"fail_every": k}``).
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLING = {"max_new_tokens": 8, "temperature": 0.7, "n": 2}


def serve(model_dir: str, fail_always: str, fail_once: str) -> None:
    from mixray.generate.config import SamplingConfig
    from mixray.generate.hf import HFEngine

    engine = HFEngine.load(model_dir, torch_threads=1)
    lock, seen = threading.Lock(), Counter()
    every = {"k": 0, "requests": 0}  # POST /control {"fail_every": k}: every k-th request fails

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _reply(self, status: int, payload: dict | str) -> None:
            body = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # the name is http.server's API
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/control":
                with lock:
                    every.update(k=req["fail_every"], requests=0)
                return self._reply(200, {"fail_every": every["k"]})
            if self.path != "/v1/chat/completions":
                return self._reply(404, {"error": "not found"})
            turn = req["messages"][-1]["content"]
            with lock:
                seen[turn] += 1
                every["requests"] += 1
                if every["k"] and every["requests"] % every["k"] == 0:
                    return self._reply(500, {"error": f"injected failure (every {every['k']})"})
                if turn == fail_always:
                    return self._reply(500, {"error": "injected failure"})
                if turn == fail_once and seen[turn] == 1:
                    return self._reply(503, {"error": "injected transient failure"})
                sampling = SamplingConfig(max_new_tokens=req["max_tokens"],
                                          temperature=req["temperature"], top_p=req["top_p"])
                [out] = engine.generate([req["messages"]], sampling, [req["seed"]])
            message = {"role": "assistant", "content": out.text}
            usage: dict = {"completion_tokens": out.n_tokens}
            # as a vLLM server with a reasoning parser answers a thinking model (Qwen3 with
            # enable_thinking): its reasoning in a field of its own, counted apart
            if (req.get("chat_template_kwargs") or {}).get("enable_thinking"):
                message["reasoning_content"] = f"Let me think. {turn}"
                usage = {"completion_tokens": out.n_tokens + 7,
                         "completion_tokens_details": {"reasoning_tokens": 7}}
            self._reply(200, {
                "id": "cmpl", "object": "chat.completion", "model": req["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": out.finish_reason}],
                "usage": usage})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PORT {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


def _wait_for_port(proc: subprocess.Popen, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the test server exited before listening"
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline().strip()
            if line.startswith("PORT "):
                return int(line.split()[1])
    raise AssertionError(f"the test server did not listen within {timeout:.0f} s")


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """The test server on the tiny model, failing for two of ten problems; while it loads, the
    hf teacher generates the same problems. Yields (base_url, problems, broken, flaky, hf run)."""
    from mixray import models
    from mixray.generate.config import TeacherConfig
    from mixray.generate.stage import generate_teacher
    from mixray.problems.config import ProblemsConfig
    from mixray.problems.stage import build_problems

    tmp = tmp_path_factory.mktemp("http")
    model = models.resolve("tiny-random")
    problems, _ = build_problems(ProblemsConfig(train_size=10, eval_size=2), tmp)
    texts = pq.read_table(problems.path / "train.parquet").to_pylist()
    broken, flaky = texts[3], texts[6]
    hf = TeacherConfig(model="tiny-random", style="short", sampling=SAMPLING, batch_size=10)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(model),
         "--fail-always", hf.prompt.format(problem=broken["problem"]),
         "--fail-once", hf.prompt.format(problem=flaky["problem"])],
        stdout=subprocess.PIPE, text=True)
    try:
        hf_run = generate_teacher("hf", hf, model, problems, tmp)
        yield f"http://127.0.0.1:{_wait_for_port(server)}/v1", problems, broken, flaky, hf_run
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None  # stopped


def test_http_teacher_matches_hf_schema_and_counts_errors(served, tmp_path: Path) -> None:
    from mixray.generate.config import TeacherConfig
    from mixray.generate.stage import generate_teacher

    base_url, problems, broken, flaky, (hf_stage, hf_stats) = served
    http = TeacherConfig(style="short", sampling=SAMPLING, batch_size=4, engine={
        "kind": "http", "base_url": base_url, "model": "tiny-random",
        "max_retries": 2, "backoff_s": 0.05, "timeout_s": 30, "max_requests_per_s": 200},
        max_error_rate=0.1)  # the broken problem's 2 of 20 rows: kept, and counted
    http_stage, http_stats = generate_teacher("api", http, None, problems, tmp_path)

    hf_table = pq.read_table(hf_stage.path / "data")
    http_table = pq.read_table(http_stage.path / "data")
    assert http_table.schema.equals(hf_table.schema)
    assert hf_table.num_rows == http_table.num_rows == 10 * 2  # problems x samples
    for table in (hf_table, http_table):
        pairs = list(zip(table["problem_id"].to_pylist(), table["sample_idx"].to_pylist(),
                         strict=True))
        assert len(set(pairs)) == 20 and set(table["sample_idx"].to_pylist()) == {0, 1}
    assert hf_stats["errors"] == 0 and hf_stats["rows"] == 20

    errors = http_table.filter(pc.equal(http_table["finish_reason"], "error")).to_pylist()
    assert http_stats["errors"] == len(errors) == 2  # both samples of the broken problem
    assert {e["problem_id"] for e in errors} == {broken["problem_id"]}
    assert all("HTTP 500" in e["error"] and e["n_tokens"] == 0 for e in errors)
    ok = http_table.filter(pc.is_null(http_table["error"]))
    assert ok.num_rows == 18 and flaky["problem_id"] in ok["problem_id"].to_pylist()
    assert all(0 <= n <= SAMPLING["max_new_tokens"] for n in ok["n_tokens"].to_pylist())
    assert http_stats["tokens"] == sum(ok["n_tokens"].to_pylist()) > 0


def test_a_thinking_servers_reasoning_is_kept_apart_from_its_answer(served, tmp_path: Path
                                                                   ) -> None:
    """Issue 28: through a server that sends a thinking model's reasoning in reasoning_content
    (asked for with the chat template's enable_thinking, as a vLLM server of Qwen3), every row
    holds the reasoning and the answer apart, with the server's reasoning token count, and only
    the answer is graded; the thinking run is a generation of its own (its key)."""
    from mixray.curate.stage import score
    from mixray.generate.config import TeacherConfig
    from mixray.generate.stage import generate_teacher

    base_url, problems, broken, _, _ = served
    engine = {"kind": "http", "base_url": base_url, "model": "tiny-random", "max_retries": 2,
              "backoff_s": 0.05, "timeout_s": 30}
    thinking = TeacherConfig(style="short", sampling=SAMPLING, batch_size=4, engine=engine,
                             chat_template_kwargs={"enable_thinking": True}, max_error_rate=0.1)
    stage, _ = generate_teacher("think", thinking, None, problems, tmp_path)
    plain, _ = generate_teacher("think", thinking.model_copy(update={"chat_template_kwargs": {}}),
                                None, problems, tmp_path)
    assert stage.key != plain.key
    rows = [r for r in pq.read_table(stage.path / "data").to_pylist() if r["error"] is None]
    assert len(rows) == 2 * 9   # the broken problem's two rows failed
    for r in rows:
        assert r["reasoning"] == f"Let me think. {r['prompt']}" and r["reasoning_tokens"] == 7
        # the completion, what a student trains on, has the reasoning back in its think block
        assert r["completion"] == f"<think>\n{r['reasoning']}\n</think>\n\n{r['response']}"
        assert r["n_tokens"] >= 7
    scored = score(pq.read_table(stage.path / "data")).to_pylist()
    # the reasoning holds the problem's numbers; the graded answer is the response alone
    from mixray.grading.grade import score_completion

    for r in scored:
        if r["error"] is None:
            assert r["extracted"] == score_completion(r["response"], r["answer"], "lenient")[0]
    assert not any(r["reasoning"] for r in pq.read_table(plain.path / "data").to_pylist())


def test_a_served_model_is_evaluated_like_a_local_one(served, tmp_path: Path) -> None:
    """python -m mixray.evaluate --engine '{kind: http, ...}': the evaluation stage with no model
    folder, every held-out problem scored, no engine errors."""
    from mixray.evaluate.config import EvaluateConfig
    from mixray.evaluate.stage import load_benchmarks, run_evaluation
    from mixray.generate.job import Placement

    base_url, problems, *_ = served
    cfg = EvaluateConfig(engine={"kind": "http", "base_url": base_url, "model": "tiny-random"},
                         sampling={"max_new_tokens": 8, "n": 2, "temperature": 0.7})
    benchmarks = load_benchmarks(cfg, problems.path / "eval.parquet", None)
    metrics = run_evaluation(None, benchmarks, cfg, "You are a helpful assistant.",
                             tmp_path / "eval", root=tmp_path,
                             placement=Placement(cpus_per_engine=0.5, torch_threads=1))
    samples = pq.read_table(tmp_path / "eval" / "samples.parquet")
    assert samples.num_rows == 2 * 2  # eval problems x samples
    assert metrics["eval_n"] == 2 and metrics["eval_samples"] == 4
    assert metrics["eval_error_rate"] == 0.0 and 0.0 <= metrics["eval_accuracy"] <= 1.0


# --- A failing engine is never cached as finished work ------------------------------------------


def _fail_every(base_url: str, k: int) -> None:
    import urllib.request

    req = urllib.request.Request(base_url.removesuffix("/v1") + "/control",
                                 data=json.dumps({"fail_every": k}).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as reply:
        assert json.loads(reply.read())["fail_every"] == k


def _cli(ray_cluster, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """A mixray CLI in its own process, as a user runs it, on the session's Ray cluster."""
    import os

    env = os.environ | {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _http_engine(base_url: str) -> str:
    # no retries: every third request fails for good, as with an API answering 429 or 401
    return f"{{kind: http, base_url: '{base_url}', model: tiny-random, max_retries: 0}}"


def test_a_failing_teacher_fails_the_stage_and_a_rerun_retries_only_its_failures(
        served, ray_cluster, tmp_path: Path) -> None:
    base_url = served[0]
    teacher = (f"{{style: %s, sampling: {{max_new_tokens: 8}}, batch_size: 4, "
               f"engine: {_http_engine(base_url)}}}")
    sweep = ["mixray.sweep", str(REPO / "sweeps" / "smoke.yaml"), "--upstream-only",
             "--set", f"run_root={tmp_path / 'runs'}",
             "--set", f"teachers={{long: {teacher % 'long'}, short: {teacher % 'short'}}}",
             # one after another: which requests fail depends on the order they arrive in
             "--set", "resources.teachers_at_once=one"]
    _fail_every(base_url, 3)
    failing = _cli(ray_cluster, tmp_path, *sweep)
    assert failing.returncode == 1, failing.stdout[-2000:] + failing.stderr[-4000:]
    message = failing.stderr.strip().splitlines()[-1]
    # smoke.yaml's 24 problems, one sample each: requests 3, 6, ..., 24 failed
    assert "generate[long]: 8 of 24 rows failed (33.3%" in message, message
    assert "HTTP 500" in message and "injected failure" in message
    generate = tmp_path / "runs" / "artifacts" / "generate"
    assert not list(generate.glob("*/_COMMITTED"))  # nothing kept as finished
    (partial,) = generate.glob(".partial-*")
    kept = pq.read_table(partial / "data")
    assert kept.num_rows == 24 and kept["error"].null_count == 16

    _fail_every(base_url, 0)
    healthy = _cli(ray_cluster, tmp_path, *sweep)
    assert healthy.returncode == 0, healthy.stdout[-2000:] + healthy.stderr[-4000:]
    stats = {p.parent.name: json.loads(p.read_text()) for p in generate.glob("*/stats.json")}
    long = next(s for s in stats.values() if s["retried_rows"])
    assert (long["rows"], long["resumed_rows"], long["retried_rows"]) == (8, 16, 8)
    assert len(stats) == 2 and all(s["errors"] == 0 for s in stats.values())
    assert "teacher long: 24 rows (8 generated, 16 resumed), 0 failed" in healthy.stdout


def test_a_failing_evaluation_exits_1_and_a_rerun_retries_only_its_failures(
        served, ray_cluster, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    base_url = served[0]
    out, uri = tmp_path / "eval", f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluate = ["mixray.evaluate", "--engine", _http_engine(base_url), "--benchmarks",
                "rg:basic_arithmetic:6", "--n", "2", "--temperature", "0.7",
                "--max-new-tokens", "8", "--out", str(out), "--tracking-uri", uri,
                "--experiment", "failing"]
    _fail_every(base_url, 3)
    failing = _cli(ray_cluster, tmp_path, *evaluate)
    assert failing.returncode == 1, failing.stdout[-2000:] + failing.stderr[-4000:]
    assert "4 of 12 rows failed (33.3%" in failing.stderr  # 6 problems x 2 samples
    assert not (out / "metrics.json").exists() and not (out / "samples.parquet").exists()
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("failing") is None  # no accuracy was recorded

    # Within a raised bound: requests 13-16 retry the 4 failures, and the 15th fails again.
    accepted = _cli(ray_cluster, tmp_path, *evaluate, "--max-error-rate", "0.5")
    assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-4000:]
    report = json.loads((out / "metrics.json").read_text())
    assert (report["generation"]["rows"], report["generation"]["resumed_rows"]) == (4, 8)
    assert report["metrics"]["eval_error_rate"] == pytest.approx(1 / 12)
    assert report["metrics"]["eval_no_answer_rate"] <= 11 / 12  # the failure is not "no answer"
    (run,) = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    assert run.data.metrics["eval_error_rate"] == pytest.approx(1 / 12)
    header = next(line for line in accepted.stdout.splitlines() if "accuracy ± se" in line)
    assert "failed" in header and "8.3%" in accepted.stdout

    _fail_every(base_url, 0)
    healthy = _cli(ray_cluster, tmp_path, *evaluate)
    assert healthy.returncode == 0, healthy.stdout[-2000:] + healthy.stderr[-4000:]
    report = json.loads((out / "metrics.json").read_text())
    assert (report["generation"]["rows"], report["generation"]["resumed_rows"]) == (1, 11)
    assert report["metrics"]["eval_error_rate"] == 0.0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server (tiny model)")
    parser.add_argument("--serve", required=True, metavar="MODEL_DIR")
    parser.add_argument("--fail-always", default="\x00never")
    parser.add_argument("--fail-once", default="\x00never")
    args = parser.parse_args()
    serve(args.serve, args.fail_always, args.fail_once)
