"""The MLflow UI and the sweep report as a person sees them, in a real (headless) browser.

On the session's finished smoke sweep (``smoke_sweep`` in conftest.py), the lean MLflow server of
``make ui`` serves the sweep's store on a free loopback port. Debian's Chromium, driven by
Playwright, opens the experiment's runs page, expands the sweep's parent run, then each trial's
run page, and reads the rendered text: the trial runs by name, and every metric with the value
MLflow stored. It also opens the report of ``mixray.report.build`` over file://. The MLflow UI
is a React single-page app: every check waits for the text to be rendered instead of sleeping.

Screenshots of each page are written to runs/screenshots/ (git-ignored) for a person to look at.
Chromium comes from ``make browser`` (run by ``make test``, as root); without it the test skips.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, Page, expect, sync_playwright

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "runs" / "screenshots"  # stable, so a person finds them after the run
TIMEOUT_MS = 60_000  # a 2-core CI machine busy with Ray; pages usually render in a few seconds
# Without these, Chromium on this closed network waits on update, sync and QUIC probes, and as
# root it refuses to start sandboxed. Playwright adds --headless and a fresh --user-data-dir.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: `make browser` "
                       "installs Debian's chromium as root (Playwright cannot download one here)"),
]


@pytest.fixture(scope="module")
def mlflow_ui(smoke_sweep, tmp_path_factory, free_ports) -> Iterator[str]:
    """The `make ui` server over the smoke sweep's store; yields its base URL, always stops it."""
    cfg = smoke_sweep[0]
    [port] = free_ports(1)
    log_path = tmp_path_factory.mktemp("mlflow-ui") / "server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
           "--backend-store-uri", cfg.tracking_uri, "--workers", "1",
           "--host", "127.0.0.1", "--port", str(port)]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log_path.open("wb") as log:
        # Its own process group: `mlflow server` runs uvicorn as a child, which must stop too.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=log_path.parent, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited {proc.returncode}:\n"
                            f"{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up in 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    # Tall enough that a run page shows its whole metrics table in the screenshot.
    context = browser.new_context(viewport={"width": 1600, "height": 1800})
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def _screenshot(page: Page, name: str, capsys: pytest.CaptureFixture[str]) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():  # shown in the test log even when the test passes
        print(f"\nscreenshot: {path}")
    return path


def _trial_runs(cfg: Any, parent_id: str) -> tuple[str, list[Run]]:
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return exp.experiment_id, sorted(runs, key=lambda r: r.info.run_name)


def _metrics_table(page_text: str) -> dict[str, str]:
    """The run page's "Metrics (N)" table as rendered: metric name -> value text."""
    lines = [line.strip() for line in page_text.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"Metrics \(\d+\)", line))
    assert lines[start + 1:start + 3] == ["Metric", "Value"], lines[start:start + 5]
    rows: dict[str, str] = {}
    i = start + 3
    while i + 1 < len(lines) and not re.fullmatch(r"Parameters \(\d+\)", lines[i]):
        if re.fullmatch(r"\w+ metrics \(\d+\)", lines[i]):  # a group: "System metrics (8)"
            i += 1
            continue
        rows[lines[i]] = lines[i + 1]
        i += 2
    return rows


def test_mlflow_ui_shows_the_trial_runs_and_their_metrics(smoke_sweep, mlflow_ui: str,
                                                         page: Page, capsys) -> None:
    cfg, first, _ = smoke_sweep
    parent_id = first["mlflow"]["parent_run_id"]
    exp_id, trials = _trial_runs(cfg, parent_id)
    # What the UI must show: the trials the sweep reported, e.g. tiny-random-long0 and -long0.5.
    assert sorted(r.info.run_name for r in trials) == sorted(t["trial"] for t in first["trials"])

    # The experiment's runs page lists the sweep's parent run; its trials are nested under it.
    page.goto(f"{mlflow_ui}/#/experiments/{exp_id}/runs")
    parent_row = page.get_by_role("row").filter(has=page.locator(f'a[href$="/runs/{parent_id}"]'))
    parent_row.locator('button[data-component-id*="runnamecellrenderer"]').click()  # expand
    for run in trials:
        link = page.locator(f'a[href$="/runs/{run.info.run_id}"]')
        expect(link).to_be_visible()
        expect(link).to_have_text(run.info.run_name)
    _screenshot(page, "mlflow-runs", capsys)

    for run in trials:
        page.goto(f"{mlflow_ui}/#/experiments/{exp_id}/runs/{run.info.run_id}")
        expect(page.get_by_text(f"Metrics ({len(run.data.metrics)})")).to_be_visible()
        expect(page.get_by_text("eval_accuracy", exact=True)).to_be_visible()
        expect(page.get_by_text(run.info.run_name, exact=True).first).to_be_visible()
        # its training data: the mix manifest as a dataset input, named with its digest
        (mix,) = run.inputs.dataset_inputs
        expect(page.get_by_text(mix.dataset.digest).first).to_be_visible()
        _screenshot(page, f"mlflow-run-{run.info.run_name}", capsys)
        shown = _metrics_table(page.inner_text("body"))
        assert {"train_loss", "eval_accuracy"} <= shown.keys()
        assert shown.keys() == run.data.metrics.keys()
        for name, value in run.data.metrics.items():  # the last value of each, as stored
            assert float(shown[name]) == pytest.approx(value, rel=1e-9), name


def test_report_shows_the_trials_and_their_metrics(smoke_sweep, page: Page, tmp_path: Path,
                                                   capsys) -> None:
    from mixray.report.build import write_report
    from mixray.report.html import fmt

    cfg, first, _ = smoke_sweep
    parent_id = first["mlflow"]["parent_run_id"]
    index = write_report(cfg.experiment, cfg.tracking_uri, parent_id, tmp_path / "report")
    page.goto(index.as_uri())
    expect(page.locator("#trials-table")).to_be_visible()
    _screenshot(page, "report", capsys)

    # The "(f) All trials" table as rendered, one dict per row keyed by its column headers.
    headers = page.locator("#trials-table thead th").all_inner_texts()
    rows = [dict(zip(headers, row.locator("td").all_inner_texts(), strict=True))
            for row in page.locator("#trials-table tbody tr").all()]
    _, trials = _trial_runs(cfg, parent_id)
    assert sorted(r["Trial"] for r in rows) == sorted(r.info.run_name for r in trials)
    by_name = {r["Trial"]: r for r in rows}
    for run in trials:
        row = by_name[run.info.run_name]
        assert row["Status"] == "FINISHED"
        assert row["Train loss"] == fmt(run.data.metrics["train_loss"])
        assert row["Eval accuracy"].split(" ± ")[0] == fmt(run.data.metrics["eval_accuracy"])
    # Every figure the page refers to was found and decoded by the browser.
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths), widths
