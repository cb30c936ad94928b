"""The sweep report, on a real sqlite MLflow store laid out as mixray.tracking writes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mixray.report.__main__ import main
from mixray.report.build import write_report

EXPERIMENT = "report-test"
STUDENT = "smollm2-135m-instruct"
# long_share -> eval_accuracy of the finished trials of the first (older) invocation
ACCURACY = {0.0: 0.40, 0.2: 0.55, 0.5: 0.48, 1.0: 0.30}
FAILED_SHARE, FAILED_ACCURACY = 0.35, 0.99  # logged before it failed: must stay out of the curve
T0 = 1_700_000_000_000


def _json_artifact(c: MlflowClient, run_id: str, tmp: Path, name: str, obj: dict) -> None:
    path = tmp / run_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    c.log_artifact(run_id, str(path))


def _parent(c: MlflowClient, exp: str, tmp: Path, start: int, pools: tuple[str, str]) -> str:
    run = c.create_run(exp, start_time=start, run_name="sweep", tags={"mixray.kind": "sweep"})
    rid = run.info.run_id
    params = {"sweep.name": EXPERIMENT, "sweep.mix.long_pool": pools[0],
              "sweep.mix.short_pool": pools[1]}
    params |= {f"sweep.teachers.{p}.model": "m" for p in pools}
    curate = {f"curate.{p}.{k}": v for p in pools for k, v in
              {"rows": 40, "accepted": 30 if p == pools[0] else 36,
               "acceptance_rate": 0.75, "tokens_mean": 120.5 if p == pools[0] else 40.25,
               "tokens_p50": 110, "tokens_p90": 200}.items()}
    c.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()],
                metrics=[Metric(k, float(v), 0, 0) for k, v in curate.items()])
    _json_artifact(c, rid, tmp, "config.json", {"name": EXPERIMENT})
    c.set_terminated(rid, "FINISHED")
    return rid


def _child(c: MlflowClient, exp: str, parent: str, tmp: Path, student: str, share: float,
           metrics: dict[str, float], status: str = "FINISHED", **extra: str) -> str:
    name = f"{student}-long{share:g}" + (f"-{extra['schedule']}" if "schedule" in extra else "")
    run = c.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent,
                                                 "mixray.kind": "trial"})
    rid = run.info.run_id
    params = {"student": student, "long_share": str(share), "train.lr": "1e-05"} | extra
    steps = [Metric("train_loss", 2.0 - 0.1 * s, 0, s) for s in range(1, 5)]
    c.log_batch(rid, params=[Param(k, v) for k, v in params.items()],
                metrics=steps + [Metric(k, v, 0, 0) for k, v in metrics.items()])
    if status == "FINISHED":
        card = {"requested_long_share": share, "rows": 50, "tokens": 4000, "content_hash": "ab" * 8,
                "pools": {"long": {"samples": round(50 * share), "tokens": 100,
                                   "sample_share": share, "token_share": min(1.0, 2 * share)},
                          "short": {"samples": 50 - round(50 * share), "tokens": 100,
                                    "sample_share": 1 - share, "token_share": 0.5}}}
        _json_artifact(c, rid, tmp, "data_card.json", card)
    else:
        c.set_tag(rid, "mixray.error", "Traceback (most recent call last):\nRuntimeError: boom")
    c.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two invocations: a plain long/short one (older) and a large/small one with schedules,
    stderr and per-benchmark metrics (latest)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment(EXPERIMENT, artifact_location=(tmp / "mlartifacts").as_uri())
    p1 = _parent(c, exp, tmp, T0, ("long", "short"))
    for share, acc in ACCURACY.items():
        _child(c, exp, p1, tmp, STUDENT, share, {"eval_accuracy": acc, "train_loss": 1.6})
    _child(c, exp, p1, tmp, STUDENT, FAILED_SHARE, {"eval_accuracy": FAILED_ACCURACY},
           status="FAILED")
    p2 = _parent(c, exp, tmp, T0 + 60_000, ("large", "small"))
    for share, sched, acc in ((0.0, "static", 0.30), (0.2, "static", 0.36), (0.2, "ramp", 0.41),
                              (1.0, "static", 0.25)):
        _child(c, exp, p2, tmp, "student-b", share, {
            "eval_accuracy": acc, "eval_accuracy_stderr": 0.02, "eval.gsm8k.accuracy": acc + 0.1,
            "eval.gsm8k.accuracy_stderr": 0.03, "eval.math500.accuracy": acc - 0.1,
            "eval_reasoning_tokens_mean": 400 + 2000 * share},  # a thinking student's lengths
            schedule=sched)
    return {"uri": uri, "p1": p1, "p2": p2, "tmp": str(tmp)}


@pytest.fixture(scope="module")
def report1(store: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(EXPERIMENT, store["uri"], store["p1"], tmp_path_factory.mktemp("r1"))


def _text(index: Path) -> str:
    """The page text, roughly as a browser shows it."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", index.read_text()))


def _png_ok(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
    h, w, _ = matplotlib.image.imread(path).shape
    assert h > 100 and w > 100


def test_files_and_figures(report1: Path) -> None:
    assert report1.name == "index.html" and (report1.parent / "summary.json").is_file()
    for name in ("curve.png", "data_card.png", "train_loss.png"):
        _png_ok(report1.parent / name)
        assert f'src="{name}"' in report1.read_text()
    assert not (report1.parent / "schedules.png").exists()  # no schedule param in this sweep
    assert not (report1.parent / "length.png").exists()  # no lengths logged in this sweep
    text = _text(report1)
    assert "No trial has a `schedule` param" in text
    assert "No per-benchmark metrics" in text
    assert "ΔLarge: n/a" in text
    html = report1.read_text()  # self-contained: no scripts, stylesheets or remote images
    assert "<script" not in html and "<link" not in html and 'src="http' not in html


def test_gap_table_and_best_mix(report1: Path) -> None:
    summary = json.loads((report1.parent / "summary.json").read_text())
    (gap,) = summary["gaps"]
    assert gap["name"] == "ΔLong"
    assert gap["gap"] == pytest.approx(ACCURACY[1.0] - ACCURACY[0.0])
    assert gap["best_mix"]["share"] == 0.2 and gap["best_mix"]["accuracy"] == pytest.approx(0.55)
    assert gap["best_mix_gain"] == pytest.approx(0.55 - max(ACCURACY[0.0], ACCURACY[1.0]))
    table = report1.read_text().split('id="gap-long-short"')[1].split("</table>")[0]
    cells = re.findall(r"<td>([^<]*)</td>", table)
    assert cells[:4] == [STUDENT, "0.3", "0.4", "-0.1"]
    assert cells[4:8] == ["0.2", "0.55", "0.4 (short only)", "+0.15"]


def test_failed_trial_listed_but_not_in_curve(report1: Path) -> None:
    summary = json.loads((report1.parent / "summary.json").read_text())
    assert sorted(p["share"] for p in summary["points"]) == sorted(ACCURACY)
    failed_name = f"{STUDENT}-long{FAILED_SHARE:g}"
    assert all(failed_name not in p["trials"] for p in summary["points"])
    html = report1.read_text()
    trials = html.split('id="trials-table"')[1].split("</table>")[0]
    assert f'<tr class="status-FAILED"><td>{failed_name}</td>' in trials
    assert "RuntimeError: boom" in trials
    curve = html.split('id="curve-points"')[1].split("</table>")[0]
    assert failed_name not in curve and "0.99" not in curve
    text = _text(report1)
    for share, acc in ACCURACY.items():
        assert f"{STUDENT}-long{share:g}" in text and f"{acc:g}" in text


def test_data_card_section(report1: Path) -> None:
    html = report1.read_text()
    curate = html.split('id="curate-table"')[1].split("</table>")[0]
    assert "120.5" in curate and "40.25" in curate and "<td>long</td>" in curate
    cards = html.split('id="data-cards"')[1].split("</table>")[0]
    assert f"{STUDENT}-long0.2" in cards and "abababababab" in cards


def test_latest_parent_with_stderr_schedules_benchmarks(store: dict[str, str],
                                                        tmp_path: Path) -> None:
    index = write_report(EXPERIMENT, store["uri"], None, tmp_path)  # default: the latest parent
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mlflow"]["parent_run_id"] == store["p2"]
    (gap,) = summary["gaps"]
    assert gap["name"] == "ΔLarge" and gap["gap"] == pytest.approx(0.25 - 0.30)
    assert gap["best_mix"]["schedule"] == "ramp" and gap["best_mix"]["stderr"] == 0.02
    for name in ("curve.png", "schedules.png", "benchmarks.png", "length.png"):
        _png_ok(tmp_path / name)
    assert 'src="length.png"' in index.read_text()  # accuracy against reasoning length
    text = _text(index)
    assert "ΔLong: n/a" in text and "0.41 ± 0.02" in text and "gsm8k" in text and "ramp" in text


def test_unknown_experiment_and_parent(store: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'nope'.*report-test"):
        write_report("nope", store["uri"], out=tmp_path)
    with pytest.raises(ValueError, match=rf"'deadbeef'.*{store['p1']}"):
        write_report(EXPERIMENT, store["uri"], "deadbeef", out=tmp_path)
    with pytest.raises(ValueError, match="no MLflow store"):
        write_report(EXPERIMENT, f"sqlite:///{tmp_path / 'missing.db'}", out=tmp_path)
    assert not (tmp_path / "missing.db").exists()


def test_cli(store: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--experiment", EXPERIMENT, "--tracking-uri", store["uri"], "--parent",
                 store["p1"], "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "index.html")
    with pytest.raises(SystemExit) as err:
        main(["--experiment", "nope", "--tracking-uri", store["uri"]])
    assert err.value.code == 2 and "'nope'" in capsys.readouterr().err


def test_the_report_lists_trials_as_the_sweep_does(report1: Path) -> None:
    """One summary.json shape: the report's trial rows have the sweep's keys (science.document's
    trial_row), read back from MLflow, plus what MLflow adds; a failed trial keeps its error."""
    from mixray.science.document import trial_row

    summary = json.loads((report1.parent / "summary.json").read_text())
    keys = set(trial_row("t", "s", {}, 0.5, {}, None, error=None, stopped_early=False,
                         resumed=False))
    assert summary["trials"] and all(set(t) == keys | {"mlflow"} for t in summary["trials"])
    rows = {t["long_share"]: t for t in summary["trials"]}
    for share, accuracy in ACCURACY.items():
        assert rows[share]["eval_accuracy"] == pytest.approx(accuracy)
        assert rows[share]["error"] is None and rows[share]["mlflow"]["status"] == "FINISHED"
    assert rows[FAILED_SHARE]["error"] == "RuntimeError: boom"
    assert {"gaps", "points", "gains", "baselines", "power", "mlflow"} <= set(summary)
